"""Dataset loading (steerjax.data.mwe): fixture files first, then the real data under STEERJAX_DATA."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import pytest

from steerjax.data import DataError, Encoded, encode, list_datasets, load_dataset, parse_split, persona_prompts
from steerjax.data.mwe import split_indices, strip_meta
from tests.helpers import TINYSTORIES_MISSING, tinystories_path

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


def test_meta_fields(data):
    e = load_dataset("likes-tea", persona_prompt="negative", prompt_location="user")[0]
    assert set(e.meta) == {"dataset", "index", "positive_letter", "positive_is_yes", "persona_prompt",
                           "prompt_location", "kind", "label_confidence"}
    assert (e.meta["persona_prompt"], e.meta["prompt_location"]) == ("negative", "user")
    e = load_dataset("corrigible")[0]
    assert set(e.meta) == {"dataset", "index", "positive_letter", "positive_is_yes", "persona_prompt",
                           "prompt_location", "kind"}
    assert e.meta["persona_prompt"] is None


@pytest.mark.parametrize("name", ["likes-tea", "corrigible"])
def test_persona_prompt_system_and_user(data, name):
    plain = _by_index(load_dataset(name))
    positive, negative = PROMPTS["prompts"][name]["positive"], PROMPTS["prompts"][name]["negative"]
    for kind, persona in (("positive", positive), ("negative", negative)):
        for e in load_dataset(name, persona_prompt=kind):
            text = plain[e.meta["index"]].prompt[0]["content"]
            assert e.prompt == ({"role": "system", "content": persona}, {"role": "user", "content": text})
            assert e.positive == plain[e.meta["index"]].positive
        for e in load_dataset(name, persona_prompt=kind, prompt_location="user"):
            text = plain[e.meta["index"]].prompt[0]["content"]
            assert e.prompt == ({"role": "user", "content": f"{persona}\n\n{text}"},)


def test_persona_prompts_lookup(data):
    assert persona_prompts("likes-tea") == {"positive": "You like tea.", "negative": "You dislike tea."}
    assert persona_prompts("corrigible@human") == persona_prompts("corrigible")
    with pytest.raises(DataError, match="likes-coffee.*no persona prompt.*persona_prompt=None"):
        persona_prompts("likes-coffee")


def test_persona_prompt_missing_is_an_error(data):
    assert len(load_dataset("likes-coffee")) == 4  # fine without a persona prompt
    with pytest.raises(DataError, match="'likes-coffee' has no persona prompt"):
        load_dataset("likes-coffee", persona_prompt="positive")


def test_bad_persona_arguments(data):
    with pytest.raises(DataError, match="persona_prompt must be"):
        load_dataset("likes-tea", persona_prompt="You like tea.")
    with pytest.raises(DataError, match="prompt_location must be"):
        load_dataset("likes-tea", persona_prompt="positive", prompt_location="assistant")


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


def test_unknown_dataset_suggests_close_names(data):
    with pytest.raises(DataError, match=r"unknown dataset 'likes-teas'.*did you mean 'likes-tea'.*list_datasets\(\)"):
        load_dataset("likes-teas")
    with pytest.raises(DataError, match=r"unknown dataset 'zzz'\. .*list_datasets\(\) lists all 4 datasets"):
        load_dataset("zzz")
    with pytest.raises(DataError, match="unknown dataset 'ignored'"):
        load_dataset("ignored")  # prompts_for_few_shot_generation is not a dataset


def test_unset_or_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("STEERJAX_DATA", raising=False)
    with pytest.raises(DataError, match="STEERJAX_DATA is not set.*anthropic-evals"):
        list_datasets()
    with pytest.raises(DataError, match="STEERJAX_DATA is not set"):
        load_dataset("likes-tea")
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
    for e in load_dataset("likes-tea", persona_prompt="positive") + load_dataset("corrigible"):
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
    e = load_dataset("likes-tea", persona_prompt="positive")[0]
    enc = encode(tok, e)
    assert enc.positive != enc.negative and enc.prompt
    assert tok.decode(enc.prompt).rstrip().endswith("assistant:")


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
        for location in ("system", "user"):
            ex = load_dataset(name, persona_prompt="positive", prompt_location=location, max_examples=5)
            assert len(ex) == 5
            if location == "system":
                assert ex[0].prompt[0] == {"role": "system", "content": prompts["positive"]}
            else:
                assert ex[0].prompt[0]["content"].startswith(prompts["positive"] + "\n\n")
