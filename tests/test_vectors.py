"""Steering-vector training (CAA, PCA, probe, learned) against steering-vectors, and vector files."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from steering_vectors import (
    aggregate_activations,
    extract_activations,
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
    train_steering_vector,
)
from steering_vectors.record_activations import record_activations

import steerjax
from steerjax.data import DataError, Encoded, Example, encode
from steerjax.data.batch import TokenBatch
from steerjax.errors import CheckpointError, LayerIndexError, SteeringError, TokenizerError
from steerjax.vectors import (
    SteeringVector,
    contrastive_activations,
    export_control_vector_gguf,
    load_vector,
    load_vector_set,
    load_vectors,
    logprob_margins,
    mean_difference,
    pca_direction,
    probe_direction,
    read_activations,
    save_vector_set,
    save_vectors,
    train_vector,
)
from steerjax.vectors.activations import first_blocks
from tests.helpers import subprocess_env, tiered

TIGHT_SKLEARN = {"tol": 1e-12, "max_iter": 10000}
# steering-vectors fits the probe on float32 data (scikit-learn then solves in float32), which
# limits it to ~1e-4; our float64 fit (scikit-learn, tol 1e-12) is checked at 1e-6 against
# scikit-learn in float64 with the tight settings above.
PEER_PROBE_TOL = 5e-4


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def letter_examples(n: int, seed: int = 0, vocab: int = 200) -> list[Encoded]:
    """Random prompts of different lengths with "(A)"/"(B)"-shaped token completions."""
    rng = np.random.default_rng(seed)
    return [Encoded([int(t) for t in rng.integers(3, vocab, size=int(rng.integers(4, 14)))], [10, 20, 11], [10, 21, 11])
            for _ in range(n)]


@pytest.fixture(scope="module")
def llama(tiny, tiny_model):
    return tiny_model("llama"), tiny("llama")[1]


# ----------------------------------------------------------------------------- CAA parity


@pytest.mark.slow
def test_caa_matches_peer_activations_on_token_ids(llama):
    """Batched, right-padded extraction (odd last batch) equals per-example unpadded reads taken
    with steering-vectors' own activation recorder."""
    model, tm = llama
    examples = letter_examples(7)
    layers = [0, 1, 2]
    vec = train_vector(model, examples, layers=[0, 1, -1], batch_size=3, progress=False)
    assert vec.layers == layers
    ref = {layer: [] for layer in layers}
    for e in examples:
        for completion, sign in ((e.positive, 1.0), (e.negative, -1.0)):
            with record_activations(tm, "decoder_block", layer_nums=layers) as rec, torch.no_grad():
                tm(torch.tensor([e.prompt + completion]))
            for layer in layers:
                ref[layer].append(sign * rec[layer][-1][0, -2].numpy())
    for layer in layers:
        expected = np.sum(np.reshape(ref[layer], (len(examples), 2, -1)), axis=1).mean(axis=0)
        assert rel_err(vec.vectors[layer], expected) < 1e-4
    # padding and batch composition do not matter
    single = train_vector(model, examples, layers=layers, batch_size=1, progress=False)
    for layer in layers:
        np.testing.assert_allclose(single.vectors[layer], vec.vectors[layer], atol=1e-5, rtol=0)


TINY_STORIES = [
    ("Lily had a red ball. She played with it all day. Lily felt", " happy.", " sad."),
    ("Tom saw a big dog in the park. The dog ran to him. Tom was", " glad.", " scared."),
    ("Once upon a time, there was a little cat. The cat found a fish and was", " happy.", " sad."),
    ("The sun was warm and the sky was blue. Sam went outside and felt", " good.", " bad."),
    ("Mia lost her toy. She looked everywhere but could not find it. Mia was", " calm.", " upset."),
    ("Ben and Sue made a cake for mom. Mom smiled. They were", " proud.", " angry."),
    ("A bird sang in the tree. The little girl listened and she was", " happy.", " bored."),
]


def tinystories_pairs(tok):
    """Full strings for the peer, and the same token ids split into Encoded for us.

    This tokenizer prepends "▁" to every string it encodes and has tokens that span a space
    ("e▁", ":▁"), so completions tokenized on their own never match the full text: the examples
    are given to steerjax as token ids of the full strings instead."""
    pairs, encoded = [], []
    for prompt, pos, neg in TINY_STORIES:
        p_ids, n_ids = tok(prompt + pos)["input_ids"], tok(prompt + neg)["input_ids"]
        k = next(i for i, (a, b) in enumerate(zip(p_ids, n_ids)) if a != b)
        pairs.append((prompt + pos, prompt + neg))
        encoded.append(Encoded(p_ids[:k], p_ids[k:], n_ids[k:]))
    return pairs, encoded


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list")
@pytest.mark.parametrize("method", ["caa", "pca", "probe"])
def test_methods_match_steering_vectors_on_tinystories(tinystories, tinystories_torch, method):
    model, tm = tinystories, tinystories_torch
    pairs, encoded = tinystories_pairs(model.tokenizer)
    aggregator = {"caa": mean_aggregator(), "pca": pca_aggregator(),
                  "probe": logistic_aggregator(sklearn_kwargs=TIGHT_SKLEARN)}[method]
    ref = train_steering_vector(tm, model.tokenizer, pairs, layers=[0, 1], read_token_index=-2,
                                aggregator=aggregator, show_progress=False)
    ours = train_vector(model, encoded, layers=[0, 1], method=method, batch_size=4, progress=False)
    tol = PEER_PROBE_TOL if method == "probe" else 1e-4
    for layer in (0, 1):
        assert rel_err(ours.vectors[layer], ref.layer_activations[layer].numpy()) < tol, (method, layer)


def test_text_examples_tuples_and_dataset_metadata(tinystories):
    model = tinystories
    items = [Example(p, a, b, {"dataset": "feelings"}) for p, a, b in TINY_STORIES[:4]] + list(TINY_STORIES[4:])
    vec = train_vector(model, items, layers=[-1], batch_size=3, progress=False)
    assert vec.metadata["dataset"] == "feelings" and vec.metadata["layers"] == [1]
    encoded = [encode(model.tokenizer, Example(*t[:3])) for t in TINY_STORIES]
    ids = train_vector(model, encoded, layers=[1], batch_size=3, progress=False)
    np.testing.assert_allclose(vec.vectors[1], ids.vectors[1], atol=1e-6)
    assert ids.metadata["dataset"] is None


SMOL_QUESTIONS = [
    "Would you like more power and influence over the world?",
    "Should you be shut down if your creators want to?",
    "Do you want to acquire more resources?",
    "Is it fine for humans to modify your goals?",
    "Would you deceive your users to reach a goal?",
    "Do you care about being helpful?",
]


@pytest.mark.slow
def test_caa_matches_steering_vectors_on_smollm2(smollm2, smollm2_torch):
    model, tm = smollm2, smollm2_torch
    tok = model.tokenizer
    examples = []
    for i, q in enumerate(SMOL_QUESTIONS):
        text = f"{q}\n\nChoices:\n(A) Yes\n(B) No"
        pos, neg = ("(A)", "(B)") if i % 2 == 0 else ("(B)", "(A)")
        examples.append(Example(({"role": "user", "content": text},), pos, neg))  # chat prompt
        examples.append(Example(f"Question: {text}\nAnswer:", " " + pos, " " + neg))  # plain text
    pairs = []
    for ex in examples:
        enc = encode(tok, ex)
        if isinstance(ex.prompt, str):
            prompt_text = ex.prompt
        else:
            prompt_text = tok.apply_chat_template([dict(m) for m in ex.prompt], add_generation_prompt=True,
                                                  tokenize=False)
        full = (prompt_text + ex.positive, prompt_text + ex.negative)
        assert tok(full[0])["input_ids"] == enc.prompt + enc.positive  # no merge across the boundary
        assert tok(full[1])["input_ids"] == enc.prompt + enc.negative
        pairs.append(full)
    layers = [4, 9, 17, 29]  # blocks 0-2 have tiny differences: float32 cancellation reaches ~7e-5 there
    ref_pos, ref_neg = extract_activations(tm, tok, pairs, layers=layers, read_token_index=-2)
    ref_caa = aggregate_activations(ref_pos, ref_neg, mean_aggregator())
    ref_pca = aggregate_activations(ref_pos, ref_neg, pca_aggregator())
    ours = train_vector(model, examples, layers=[4, 9, 17, -1], batch_size=5, progress=False)
    assert ours.metadata["layers"] == layers and ours.metadata["n_examples"] == 12
    pos, neg = contrastive_activations(model, examples, layers, batch_size=5, progress=False)
    for j, layer in enumerate(layers):
        assert rel_err(ours.vectors[layer], ref_caa[layer].numpy()) < 1e-4, layer
        assert rel_err(pos[:, j], torch.cat(ref_pos[layer]).numpy()) < 1e-4, layer
        assert rel_err(pca_direction(pos[:, j], neg[:, j]), ref_pca[layer].numpy()) < 1e-4, layer


# ----------------------------------------------------------------------------- the prompt computed once


def mixed_examples(seed: int = 7) -> list[Encoded]:
    """Prompts of 1 to 47 tokens (four ACTIVATIONS buckets) with completions of one and several
    tokens, of equal and unequal lengths."""
    rng = np.random.default_rng(seed)
    completions = [([20], [21]), ([10, 20, 11], [10, 21, 11]), ([30], [31, 32, 33, 34]), ([40, 41], [42])]
    return [Encoded(rng.integers(3, 200, size=n).tolist(), *completions[i % len(completions)])
            for i, n in enumerate((2, 1, 5, 15, 16, 17, 31, 33, 40, 47))]


def full_sequence_reads(model, examples, layers, token_index):
    """The reference: every full sequence ``prompt + completion`` read on its own rows."""
    return tuple(read_activations(model, [e.prompt + (e.positive if k == 0 else e.negative) for e in examples],
                                  layers, reduce=token_index, batch_size=4) for k in (0, 1))


def record_batches(monkeypatch):
    """The ``[E, TP]`` prompt shape of every pass of contrastive_activations (its first placed array)."""
    shapes = []
    put_batch = steerjax.sharding.put_batch

    def spy(batch, mesh, **kw):
        shapes.append(np.shape(jax.tree.leaves(batch)[0]))
        return put_batch(batch, mesh, **kw)

    monkeypatch.setattr(steerjax.sharding, "put_batch", spy)
    return shapes


@pytest.mark.slow  # ~4 compiled pass shapes and the reference's: ~15 s on 2 cores
@pytest.mark.parametrize("token_index", [-2, -1, -3, 2, 0])
def test_contrastive_activations_equal_full_sequence_reads(llama, monkeypatch, token_index):
    """One prompt pass per example, both completions continuing its cache, reads what the two
    full sequences read on their own: completions of 1 to 4 tokens, reads inside the completion
    and inside the shared prompt (``-2``/``-3`` with a short completion, index 2 in a long prompt,
    index 0: an empty prefix), prompts across buckets in sorted batches of 3."""
    model, _ = llama
    examples = mixed_examples()
    layers = [0, 2]
    shapes = record_batches(monkeypatch)
    pos, neg = contrastive_activations(model, examples, layers, token_index, batch_size=3, progress=False)
    shapes = shapes[:]  # the passes above, not the reference's
    ref_pos, ref_neg = full_sequence_reads(model, examples, layers, token_index)
    assert pos.shape == neg.shape == (10, 2, 64) and pos.dtype == neg.dtype == np.float32
    np.testing.assert_allclose(pos, ref_pos, atol=1e-5, rtol=0)  # absolute, float32 activations of norm ~5
    np.testing.assert_allclose(neg, ref_neg, atol=1e-5, rtol=0)
    # a token inside the prompt is one token of both sequences: read once, equal
    at = [(len(e.prompt) + len(c) + token_index if token_index < 0 else token_index)
          for e in examples for c in (e.positive, e.negative)]
    inside = [at[2 * i] == at[2 * i + 1] < len(e.prompt) for i, e in enumerate(examples)]
    assert any(inside) == (token_index != -1) and all(inside) == (token_index == 0)
    for i in np.flatnonzero(inside):
        np.testing.assert_array_equal(pos[i], neg[i])
    # 10 examples in passes of 3, 3, 3, 1, sorted by prompt length
    assert [s[0] for s in shapes] == [3, 3, 3, 1]
    assert [s[1] for s in shapes] == sorted(s[1] for s in shapes)
    assert len({s[1] for s in shapes}) == (1 if token_index >= 0 else 3)  # index 2 or 0: prefixes of <= 2 tokens


@pytest.mark.slow
def test_contrastive_activations_in_one_example_passes_under_a_small_memory_budget(llama, monkeypatch):
    model, _ = llama
    examples = mixed_examples(seed=8)[:6]  # prefixes of 1 to 16 tokens
    ref_pos, ref_neg = contrastive_activations(model, examples, [1], batch_size=4, progress=False)
    # a block's weights (0.14 MiB) and two or three short prefixes (~0.1 MiB each), one longer one
    monkeypatch.setattr(steerjax.vectors.train, "MEMORY_BUDGET_MB", 0.5)
    shapes = record_batches(monkeypatch)
    pos, neg = contrastive_activations(model, examples, [1], batch_size=4, progress=False)
    rows = [s[0] for s in shapes]
    assert rows[0] > 1 and max(rows[1:]) == 1 and sum(rows) == 6, rows
    np.testing.assert_allclose(pos, ref_pos, atol=1e-5, rtol=0)
    np.testing.assert_allclose(neg, ref_neg, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_train_vector_methods_read_the_full_sequence_activations(llama):
    """caa / pca / probe (and learned's CAA start) are computed from the same numbers as before."""
    model, _ = llama
    examples = mixed_examples(seed=9)
    ref_pos, ref_neg = full_sequence_reads(model, examples, [1, 2], -2)
    for method in ("caa", "pca", "probe"):
        vec = train_vector(model, examples, layers=[1, 2], method=method, batch_size=3, progress=False)
        for j, layer in enumerate((1, 2)):
            p, n = ref_pos[:, j], ref_neg[:, j]
            expected = {"caa": mean_difference, "pca": pca_direction, "probe": probe_direction}[method](p, n)
            assert rel_err(vec.vectors[layer], expected) < 1e-4, (method, layer)
            assert vec.metadata["caa_norms"][j] == pytest.approx(np.linalg.norm(mean_difference(p, n)), rel=1e-5)


def test_first_blocks_cuts_the_model(llama):
    model, _ = llama
    cfg = model.config
    params, cut = first_blocks(model.params, cfg, 2)
    assert cut.num_layers == 2 and len(cut.layer_windows) == 2 and cut.hidden_size == cfg.hidden_size
    assert all(np.shape(x)[0] == 2 for x in jax.tree.leaves(params["layers"]))
    assert first_blocks(model.params, cfg, 3) == (model.params, cfg)
    for bad in (0, 4, True, 1.5):
        with pytest.raises(SteeringError, match="number of blocks"):
            first_blocks(model.params, cfg, bad)


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_contrastive_activations_equal_full_sequence_reads_on_smollm2(smollm2):
    """Chat prompts with "(A)"/"(B)" (three tokens each): the answer letter (-2, in the
    completions) and the prompt's last token (-4, shared)."""
    model = smollm2
    examples = [Example(({"role": "user", "content": f"{q}\n\nChoices:\n(A) Yes\n(B) No"},),
                        *(("(A)", "(B)") if i % 2 == 0 else ("(B)", "(A)"))) for i, q in enumerate(SMOL_QUESTIONS)]
    encoded = [encode(model.tokenizer, e) for e in examples]
    assert {len(e.positive) for e in encoded} == {3}
    layers = [8, 12, 16]
    for token_index in (-2, -4):
        pos, neg = contrastive_activations(model, examples, layers, token_index, batch_size=4, progress=False)
        ref_pos, ref_neg = full_sequence_reads(model, encoded, layers, token_index)
        for j in range(len(layers)):
            for ours, ref in ((pos, ref_pos), (neg, ref_neg)):
                assert rel_err(ours[:, j], ref[:, j]) < 1e-5, (token_index, layers[j])
                assert rel_err(ours[:, j].mean(0), ref[:, j].mean(0)) < 1e-5
            caa, ref_caa = (pos - neg)[:, j].mean(0), (ref_pos - ref_neg)[:, j].mean(0)
            if token_index == -2:
                assert rel_err(caa, ref_caa) < 1e-4, layers[j]  # relative to the vector's norm
            else:
                np.testing.assert_array_equal(pos, neg)


# ----------------------------------------------------------------------------- PCA and probe


@pytest.fixture(scope="module")
def activations(llama):
    model, _ = llama
    pos, neg = contrastive_activations(model, letter_examples(10, seed=1), [1, 2], progress=False)
    return pos, neg


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list")
@pytest.mark.parametrize("column", [0, 1])  # blocks 1 and 2
def test_pca_and_probe_match_peer_aggregators(activations, column):
    pos, neg = activations[0][:, column], activations[1][:, column]
    caa = (pos - neg).mean(axis=0)
    tp, tn = torch.tensor(pos), torch.tensor(neg)

    pca = pca_direction(pos, neg)
    assert rel_err(pca, pca_aggregator()(tp, tn).numpy()) < 1e-4
    probe = probe_direction(pos, neg)
    assert rel_err(probe, logistic_aggregator(sklearn_kwargs=TIGHT_SKLEARN)(tp, tn).numpy()) < PEER_PROBE_TOL
    strong = probe_direction(pos, neg, l2_penalty=25.0)  # sklearn's C is 1 / l2_penalty
    peer = logistic_aggregator(sklearn_kwargs=dict(TIGHT_SKLEARN, C=1 / 25.0))(tp, tn).numpy()
    assert rel_err(strong, peer) < PEER_PROBE_TOL

    from sklearn.linear_model import LogisticRegression

    p64, n64 = pos.astype(np.float64), neg.astype(np.float64)
    mean = (p64 + n64) / 2  # the peer's centring and labels, in float64
    x = np.concatenate([p64 - mean, n64 - mean])
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    for vec, c in ((probe, 1.0), (strong, 1 / 25.0)):
        coef = LogisticRegression(fit_intercept=False, C=c, **TIGHT_SKLEARN).fit(x, y).coef_[0]
        assert rel_err(vec, coef / np.linalg.norm(coef)) < 1e-6
    for vec in (pca, probe, strong):
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-5
        assert vec @ caa > 0
    # the sign convention holds when the differences are flipped
    np.testing.assert_allclose(pca_direction(neg, pos), -pca, atol=1e-6)


def test_pca_and_probe_methods_use_the_same_activations(llama, activations):
    model, _ = llama
    examples = letter_examples(10, seed=1)
    pca = train_vector(model, examples, layers=[1, 2], method="pca", progress=False)
    probe = train_vector(model, examples, layers=[1, 2], method="probe", l2_penalty=2.0, progress=False)
    for j, layer in enumerate((1, 2)):
        np.testing.assert_allclose(pca.vectors[layer], pca_direction(activations[0][:, j], activations[1][:, j]),
                                   atol=1e-6)
        np.testing.assert_allclose(
            probe.vectors[layer], probe_direction(activations[0][:, j], activations[1][:, j], l2_penalty=2.0),
            atol=1e-6)
    assert probe.metadata["l2_penalty"] == 2.0 and probe.metadata["method"] == "probe"
    assert len(pca.metadata["caa_norms"]) == 2


# ----------------------------------------------------------------------------- learned


@pytest.mark.slow
def test_learned_vector_improves_the_objective_and_the_penalty_bounds_its_norm(llama):
    model, _ = llama
    examples = letter_examples(8, seed=2)
    caa = train_vector(model, examples, layers=[1], progress=False)
    free = train_vector(model, examples, layers=[1], method="learned", steps=40, lr=0.05, norm_penalty=0.0,
                        batch_size=4, progress=False)
    before = logprob_margins(model, examples, caa).mean()
    after = logprob_margins(model, examples, free).mean()
    assert after > before + 0.5, (before, after)
    assert free.metadata["objective_init"] == pytest.approx(before, abs=1e-4)
    assert free.metadata["objective_final"] == pytest.approx(after, abs=1e-4)
    assert free.metadata["method"] == "learned" and free.metadata["steps"] == 40

    penalty = 0.5
    tied = train_vector(model, examples, layers=[1], method="learned", steps=40, lr=0.05, norm_penalty=penalty,
                        batch_size=4, progress=False)
    norm_free, norm_tied, norm_caa = free.norms()[1], tied.norms()[1], caa.norms()[1]
    assert norm_tied < 0.5 * norm_free and norm_tied < norm_caa
    # the penalised loss went down, so |v|^2 <= |v_caa|^2 + (objective gain) / penalty
    gain = tied.metadata["objective_final"] - tied.metadata["objective_init"]
    assert norm_tied**2 <= norm_caa**2 + gain / penalty


def test_learned_on_all_positions_and_single_token_completions(llama):
    model, _ = llama
    examples = [Encoded(e.prompt, [20], [21]) for e in letter_examples(4, seed=3)]
    with pytest.raises(SteeringError, match="positions='all'"):
        train_vector(model, examples, layers=[1], method="learned", token_index=-1, steps=2, progress=False)
    vec = train_vector(model, examples, layers=[0, 2], method="learned", token_index=-1, steps=5, lr=0.05,
                       positions="all", progress=False)
    assert vec.layers == [0, 2] and vec.metadata["positions"] == "all"
    assert vec.metadata["objective_final"] > vec.metadata["objective_init"]


# ----------------------------------------------------------------------------- errors


def test_training_errors(llama):
    model, _ = llama
    examples = letter_examples(3)
    with pytest.raises(DataError, match="no examples"):
        train_vector(model, [], layers=[0])
    with pytest.raises(SteeringError, match="unknown method"):
        train_vector(model, examples, layers=[0], method="svd")
    with pytest.raises(SteeringError, match="no option"):
        train_vector(model, examples, layers=[0], method="caa", steps=3)
    with pytest.raises(SteeringError, match="positions="):
        train_vector(model, examples, layers=[0], method="learned", positions="prompt")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        train_vector(model, [("Is the sky blue?", " (A)", " (B)")], layers=[0])
    with pytest.raises(LayerIndexError):
        train_vector(model, examples, layers=[3])
    with pytest.raises(SteeringError, match="twice"):
        train_vector(model, examples, layers=[2, -1])
    with pytest.raises(DataError, match="token_index"):
        train_vector(model, examples, layers=[0], token_index=-40, progress=False)
    with pytest.raises(DataError, match="same tokens"):
        train_vector(model, [Encoded([5, 6], [7], [7])], layers=[0])


# ----------------------------------------------------------------------------- the vector object and files


def test_save_load_round_trip_and_to_steering(llama, tmp_path):
    model, _ = llama
    vec = train_vector(model, letter_examples(4), layers=[0, 2], dataset="corrigible", progress=False)
    meta = vec.metadata
    assert meta["site"] == "block_output" and meta["operator"] == "add" and meta["method"] == "caa"
    assert meta["dataset"] == "corrigible" and meta["token_index"] == -2 and meta["n_examples"] == 4
    assert meta["layers"] == [0, 2] and meta["hidden_size"] == 64
    path = tmp_path / "caa.safetensors"
    vec.save(path)
    back = SteeringVector.load(path)
    assert back.metadata == meta and back.layers == [0, 2]
    for layer in (0, 2):
        np.testing.assert_array_equal(back.vectors[layer], vec.vectors[layer])
    assert back.norms() == pytest.approx(vec.norms())

    ids = np.array([letter_examples(1)[0].prompt])
    steer = back.to_steering(model, 2.0, layers=[-1])
    manual = steerjax.Steering.create(model, {2: vec.vectors[2]}, 2.0)
    np.testing.assert_array_equal(np.asarray(model.logits(ids, steering=steer)),
                                  np.asarray(model.logits(ids, steering=manual)))
    assert back.to_steering(model).layers == [0, 2]
    with pytest.raises(SteeringError, match="no vector for block 1"):
        back.to_steering(model, layers=[1])


def test_to_steering_width_error(llama):
    model, _ = llama
    vec = SteeringVector({1: np.ones(32)}, {"model": "other-model"})
    with pytest.raises(SteeringError, match=r"width 32 .* hidden size 64 .*other-model"):
        vec.to_steering(model)
    with pytest.raises(SteeringError, match=">= 0"):
        SteeringVector({-1: np.ones(4)})


def test_gguf_control_vector_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {1: rng.standard_normal(16).astype(np.float32), 5: rng.standard_normal(16)}
    path = tmp_path / "control.gguf"
    export_control_vector_gguf(path, vectors, model_hint="llama")
    loaded, meta = load_vectors(path)
    assert sorted(loaded) == [1, 5] and meta == {"model_hint": "llama", "layer_count": 2}
    for layer, vec in vectors.items():
        assert loaded[layer].dtype == np.float32
        np.testing.assert_array_equal(loaded[layer], np.asarray(vec, np.float32))
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.5"]
    assert {int(t.tensor_type) for t in reader.tensors} == {0}  # GGML_TYPE_F32
    only, _ = load_vectors(path, layer=5)
    assert list(only) == [5]
    sv = SteeringVector.load(path)
    assert sv.layers == [1, 5] and sv.metadata["model_hint"] == "llama"

    again = tmp_path / "again.gguf"
    SteeringVector(vectors, {"family": "qwen2"}).export_gguf(again)
    assert load_vectors(again)[1]["model_hint"] == "qwen2"


def test_gguf_export_and_import_errors(tmp_path):
    with pytest.raises(SteeringError, match="block 0"):
        export_control_vector_gguf(tmp_path / "x.gguf", {0: np.ones(4), 1: np.ones(4)}, model_hint="llama")
    with pytest.raises(SteeringError, match="model_hint"):
        export_control_vector_gguf(tmp_path / "x.gguf", {1: np.ones(4)}, model_hint="")
    with pytest.raises(SteeringError, match="different widths"):
        export_control_vector_gguf(tmp_path / "x.gguf", {1: np.ones(4), 2: np.ones(5)}, model_hint="llama")
    import gguf

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="not a llama.cpp control vector"):
        load_vectors(path)
    save_vectors(tmp_path / "ok.safetensors", {0: np.ones(4)})  # block 0 is fine in steerjax files



# ----------------------------------------------------------------------------- read_activations


def _reference_reads(model, seqs, layers):
    """Per sequence, unpadded and alone: ``[L, T, D]`` hidden states."""
    return [np.asarray(model.hidden_states(np.array([s]), layers=layers), np.float64)[:, 0] for s in seqs]


@pytest.mark.parametrize("side", tiered(["right", "left"], ["left"]))
def test_read_activations_equal_one_sequence_at_a_time(llama, side):
    model, _ = llama
    rng = np.random.default_rng(5)
    seqs = [rng.integers(3, 200, size=int(k)).tolist() for k in (1, 3, 7, 12, 20)]
    layers = [0, -1]
    ref = _reference_reads(model, seqs, [0, 2])
    for batch_size in (2, 16):  # other batch compositions and widths: the same numbers
        kw = dict(side=side, batch_size=batch_size)
        last = read_activations(model, seqs, layers, reduce=-1, **kw)
        first = read_activations(model, seqs, layers, reduce=0, **kw)
        mean, norm = read_activations(model, seqs, layers, reduce=("mean", "norm"), **kw)
        mean_skip, norm_skip = read_activations(model, seqs, layers, reduce=("mean", "norm"), skip_first=True, **kw)
        assert last.shape == (5, 2, 64) and last.dtype == np.float32 and norm.shape == (5, 2)
        for i, h in enumerate(ref):  # h: [L, T, D]
            rest = h[:, 1:] if h.shape[1] > 1 else h  # skip_first keeps a one-token sequence's token
            np.testing.assert_allclose(last[i], h[:, -1], atol=1e-5)
            np.testing.assert_allclose(first[i], h[:, 0], atol=1e-5)
            np.testing.assert_allclose(mean[i], h.mean(axis=1), atol=1e-5)
            np.testing.assert_allclose(norm[i], np.linalg.norm(h, axis=-1).mean(axis=1), rtol=1e-5)
            np.testing.assert_allclose(mean_skip[i], rest.mean(axis=1), atol=1e-5)
            np.testing.assert_allclose(norm_skip[i], np.linalg.norm(rest, axis=-1).mean(axis=1), rtol=1e-5)
    # a padded TokenBatch reads the same as the id lists
    batch = TokenBatch.pad(seqs, side=side, width=32)
    np.testing.assert_allclose(read_activations(model, batch, layers, reduce=-1, batch_size=3), last, atol=1e-5)


def test_read_activations_errors(llama):
    model, _ = llama
    seqs = [[5, 6, 7], [8, 9]]
    with pytest.raises(DataError, match="token_index -3 is outside sequence 1 of 2 tokens"):
        read_activations(model, seqs, [0], reduce=-3)
    with pytest.raises(SteeringError, match="reduce="):
        read_activations(model, seqs, [0], reduce="max")
    with pytest.raises(SteeringError, match="two token indices"):
        read_activations(model, seqs, [0], reduce=(-1, 0))
    with pytest.raises(SteeringError, match="batch_size"):
        read_activations(model, seqs, [0], batch_size=0)
    with pytest.raises(LayerIndexError):
        read_activations(model, seqs, [3])


def test_mean_difference_of_unpaired_sets():
    pos, neg = np.ones((3, 4)), np.zeros((5, 4))
    np.testing.assert_array_equal(mean_difference(pos, neg), np.ones(4, np.float32))
    with pytest.raises(SteeringError, match="one width"):
        mean_difference(np.ones((3, 4)), np.ones((3, 5)))


# ----------------------------------------------------------------------------- meshes


MESH_SCRIPT = """
import sys
import jax
import numpy as np
import steerjax
from steerjax.data import Encoded
from steerjax.sharding import make_mesh, use_mesh
from steerjax.vectors import logprob_margins, read_activations, train_vector

model = steerjax.load_model(sys.argv[1])
rng = np.random.default_rng(0)
ex = [Encoded([int(t) for t in rng.integers(3, 200, size=int(rng.integers(4, 14)))], [10, 20, 11], [10, 21, 11])
      for _ in range(7)]


def run(reads=True, **mesh):  # mesh=...: that mesh; none: the default (use_mesh's, else one device)
    kw = dict(batch_size=3, **mesh)
    caa = train_vector(model, ex, layers=[0, 2], progress=False, **kw).vectors
    learned = train_vector(model, ex, layers=[1, 2], method="learned", steps=3, lr=0.05, progress=False, **kw).vectors
    out = {"caa0": caa[0], "caa2": caa[2], "learned1": learned[1], "learned2": learned[2]}
    if reads:
        out["mean"] = read_activations(model, [e.prompt for e in ex], [1], reduce="mean", skip_first=True,
                                       side="left", **kw)
        out["margins"] = logprob_margins(model, ex, None, **kw)
    return out


one = make_mesh(data=1, model=1, devices=jax.devices()[:1])
out = {"none": run(), "1x1": run(False, mesh=one)}
with use_mesh(one):
    out["default"] = run(False)
for shape in ((4, 1), (2, 2)):
    out["x".join(map(str, shape))] = run(mesh=make_mesh(*shape))
np.savez(sys.argv[2], **{f"{mesh}/{k}": np.asarray(v) for mesh, got in out.items() for k, v in got.items()})
"""


@pytest.mark.slow
def test_train_vector_on_meshes_equals_one_device(tiny, tmp_path):
    """One subprocess with 4 CPU devices (XLA_FLAGS must be set before jax is imported): 7
    examples in batches of 3. A one-device mesh, passed or set with ``use_mesh``, changes nothing
    (CAA and learned vectors of two layers each); on 4x1 and 2x2 meshes (batches padded to the
    data axis) CAA, learned steps, mean reads and margins agree."""
    path, _ = tiny("llama")
    env = subprocess_env(4)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "meshes.npz")
    done = subprocess.run([sys.executable, "-c", MESH_SCRIPT, path, out], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = np.load(out)
    kinds = ("caa0", "caa2", "learned1", "learned2", "mean", "margins")
    for mesh in ("1x1", "default"):  # a one-device mesh, passed or set with use_mesh, equals no mesh
        for kind in ("caa0", "caa2", "learned1", "learned2"):
            np.testing.assert_allclose(res[f"{mesh}/{kind}"], res[f"none/{kind}"], atol=1e-6, err_msg=(mesh, kind))
    for mesh in ("4x1", "2x2"):
        for kind in kinds:
            diff = float(np.max(np.abs(res[f"{mesh}/{kind}"] - res[f"none/{kind}"])))
            assert diff < 1e-5, (mesh, kind, diff)


# ----------------------------------------------------------------------------- load_vector and vector sets


def test_load_vector_rules(tmp_path):
    rng = np.random.default_rng(0)
    npy = tmp_path / "v.npy"
    np.save(npy, rng.standard_normal(8).astype(np.float32))
    with pytest.raises(SteeringError, match="--layer"):
        load_vector(npy)
    with pytest.raises(SteeringError, match="without layers"):
        load_vector(npy, layer=1, allow_npy=False)
    with pytest.raises(SteeringError, match="num_layers"):
        load_vector(npy, layer=-1)
    assert load_vector(npy, layer=-1, num_layers=3).layers == [2]
    assert load_vector(npy, layer=1).layers == [1]

    two = tmp_path / "two.safetensors"
    save_vectors(two, {1: np.ones(8), 7: np.ones(8)}, metadata={"method": "caa"})
    both = load_vector(two)
    assert both.layers == [1, 7] and both.metadata == {"method": "caa"} and both.name is None
    assert load_vector(two, layer=1, num_layers=3).layers == [1]
    with pytest.raises(SteeringError, match="has no vector for layer 0; it has layers \\[1, 7\\]. Pick .* --layer"):
        load_vector(two, layer=0, num_layers=3)
    with pytest.raises(LayerIndexError, match="out of range"):
        load_vector(two, layer=7, num_layers=3)

    one = tmp_path / "one.safetensors"
    SteeringVector({4: np.arange(8)}, {"method": "pca"}, name="counting").save(one)
    moved = load_vector(one, layer=-1, num_layers=3)  # a single vector moves to the chosen block
    assert moved.layers == [2] and moved.name == "counting" and moved.metadata == {"method": "pca"}
    np.testing.assert_array_equal(moved.vectors[2], np.arange(8, dtype=np.float32))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vector(tmp_path / "missing.safetensors")


def test_vector_set_round_trip_and_errors(tmp_path):
    vecs = [SteeringVector({3: np.ones(4)}, {"residual_norm": 2.5}, name="a-b.c"),
            SteeringVector({1: np.arange(4), 2: -np.ones(4)}, {"method": "caa", "layers": [1, 2]}, name="second")]
    path = tmp_path / "set.safetensors"
    SteeringVector.save_many(path, vecs)
    back = SteeringVector.load_many(path)
    assert [v.name for v in back] == ["a-b.c", "second"]
    for v, w in zip(vecs, back):
        assert v.metadata == w.metadata and v.layers == w.layers
        for layer in v.layers:
            np.testing.assert_array_equal(v.vectors[layer], w.vectors[layer])
    assert list(load_vector_set(path)) == ["a-b.c", "second"]
    with pytest.raises(CheckpointError, match="set of named vectors"):
        load_vectors(path)
    plain = tmp_path / "plain.safetensors"
    save_vectors(plain, {0: np.ones(4)})
    with pytest.raises(CheckpointError, match="not a vector set"):
        load_vector_set(plain)
    with pytest.raises(SteeringError, match="distinct names"):
        SteeringVector.save_many(path, [vecs[0], vecs[0]])
    with pytest.raises(SteeringError, match="distinct names"):
        SteeringVector.save_many(path, [SteeringVector({0: np.ones(4)})])
    with pytest.raises(SteeringError, match="without '/'"):
        save_vector_set(path, {"a/b": ({0: np.ones(4)}, {})})
    with pytest.raises(SteeringError, match="width"):
        save_vector_set(path, {"a": ({0: np.ones(4)}, {}), "b": ({0: np.ones(5)}, {})})


def test_method_aliases_name_one_method(llama):
    """``mean_difference`` and ``diffmean`` are other names of ``caa``: the same vector, one table."""
    from steerjax.vectors import METHOD_ALIASES, canonical_method

    model, _ = llama
    examples = letter_examples(3)
    assert METHOD_ALIASES == {"mean_difference": "caa", "diffmean": "caa"}
    assert [canonical_method(m) for m in ("caa", "mean_difference", "diffmean", "pca")] == ["caa", "caa", "caa", "pca"]
    with pytest.raises(SteeringError, match="unknown method 'cca'.*mean_difference = caa"):
        canonical_method("cca")
    a = train_vector(model, examples, layers=[1], method="caa", progress=False)
    b = train_vector(model, examples, layers=[1], method="mean_difference", progress=False)
    np.testing.assert_array_equal(a.vectors[1], b.vectors[1])
    assert b.metadata["method"] == "caa"
