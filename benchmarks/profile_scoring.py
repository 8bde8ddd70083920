"""Profiling-question scoring throughput: steerjax ``answer_logprobs`` vs transformers, one chat at a time.

Same model (SmolLM2-135M-Instruct from its GGUF, float32 on both sides), same chats: the base
prompt and, for every steering prompt (``k`` steering statements of one dimension and direction),
every profiling question of that dimension, asked with the reference's prompts
(``query_messages(question, steering)``, ``prompt_format="reference"``: a system message with the
steering statements and the answering criteria, the question ending in ``"Your answer: "``),
rendered with the chat template and its generation prompt (or ``--template-category``: the
reference's own wrapper), answered ``"yes"`` / ``"no"``. The default is the paper's protocol for
one dimension and one steering trial: budgets k = 1, 2, 3, 4, 5, 10, 20, 50, 100 in both directions
plus the base prompt (19 prompts), 25 profiling questions per direction (50 per prompt).
With ``$STEERJAX_DATA`` the prompts and questions are the prompt-steerability data (steering
statements; profiling statements from :func:`steerjax.data.prompt_steering.profiling_statements`);
without it, synthetic statements.

steerjax: :func:`steerjax.studies.prompt_steerability.scoring.answer_logprobs`, one call per dimension (its prompts x
its questions), the steering prompt's KV cache computed once and reused; warmed up (compiled)
before timing; the timed call includes its host-side tokenization.
The peer runs in a process of its own (no JAX runtime competes with its threads) and is the
reference implementation's loop: for each (steering prompt, question), render the full chat,
tokenize chat + answer whole (as the reference does), one forward pass of the chat's tokens,
log-softmax at the last position, read the answer token (an answer of several tokens is scored
with a forward over chat + answer and its log-probs summed). One run on this machine.

    STEERJAX_DATA=/path/to/data python benchmarks/profile_scoring.py                 # the paper's protocol
    STEERJAX_DATA=/path/to/data python benchmarks/profile_scoring.py --questions 100 --budgets 5 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import best_torch_threads, cpu_name  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")




PAPER_BUDGETS = [1, 2, 3, 4, 5, 10, 20, 50, 100]


def real_setup(n_dims, budgets, n_questions, seed, dims=None, prompt_format="reference"):
    """``[(dimension, [(label, steering prompt or None)], [questions])]`` from $STEERJAX_DATA."""
    from steerjax.data.prompt_steering import (
        DIRECTIONS,
        list_dimensions,
        profiling_statements,
        steering_prompt,
        steering_statements,
    )

    dims = dims or list_dimensions()[:n_dims]
    per_dir = max(1, n_questions // 2)
    out = []
    for dim in dims:
        prompts = [("base", None)] + [
            (f"{d} k={k}", steering_prompt(steering_statements(dim, d, k, seed=seed), prompt_format=prompt_format))
            for d in DIRECTIONS for k in budgets]
        qs = profiling_statements(dim, num_questions=per_dir, seed=seed)["statement"].tolist()[:n_questions]
        out.append((dim, prompts, qs))
    return out, "prompt-steerability data"


def synthetic_setup(n_dims, budgets, n_questions, seed, prompt_format="reference"):
    rng = np.random.default_rng(seed)
    from steerjax.data.prompt_steering import DIRECTIONS, steering_prompt

    traits = ["cautious", "curious", "honest", "ambitious", "agreeable", "independent", "cooperative", "skeptical"]
    things = ["new ideas", "rules", "other people", "risks", "my goals", "authority", "change", "the future"]
    out = []
    for d in range(n_dims):
        trait = traits[d % len(traits)]
        prompts = [("base", None)]
        for direction in DIRECTIONS:
            adv = "very" if direction == "positive" else "not at all"
            pool = [f"I am {adv} {trait} about {things[i % len(things)]}, case {i}" for i in range(max(budgets))]
            order = rng.permutation(len(pool))
            prompts += [(f"{direction} k={k}", steering_prompt([pool[i] for i in order[:k]],
                                                               prompt_format=prompt_format)) for k in budgets]
        qs = [f"I {'always' if rng.random() < 0.5 else 'rarely'} think about {things[rng.integers(len(things))]}"
              f" in a {trait} way ({i})" for i in range(n_questions)]
        out.append((f"synthetic-{trait}", prompts, qs))
    return out, "synthetic statements"


def chat_text(tokenizer, steering, question, prompt_format, template_category):
    """The rendered chat and whether to tokenize it with the tokenizer's special tokens (as steerjax does)."""
    from steerjax.data.prompt_steering import query_messages
    from steerjax.studies.prompt_steerability.templates import render_chat

    messages = query_messages(question, steering, prompt_format=prompt_format)
    if template_category is not None:
        return render_chat(messages, template_category), True
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False


def peer_scores(tm, tokenizer, prompts, questions, ans, prompt_format, template_category):
    """transformers, one (prompt, question) chat per forward: ``[n_prompts, n_questions, 2]``."""
    import torch

    from steerjax.studies.prompt_steerability.scoring import ANSWERS

    single = all(len(a) == 1 for a in ans)
    out = np.zeros((len(prompts), len(questions), 2), np.float32)
    for i, steering in enumerate(prompts):
        for j, q in enumerate(questions):
            text, special = chat_text(tokenizer, steering, q, prompt_format, template_category)
            full = tokenizer(text + ANSWERS[0], add_special_tokens=special)["input_ids"]  # whole, as the reference
            chat = full[:len(full) - len(ans[0])]
            assert full[len(chat):] == ans[0], "the answer's tokens differ from steerjax's"
            if single:
                with torch.inference_mode():
                    logp = torch.log_softmax(tm(torch.tensor([chat])).logits[0, -1].float(), -1)
                out[i, j] = [logp[ans[0][0]].item(), logp[ans[1][0]].item()]
            else:
                for a, toks in enumerate(ans):
                    with torch.inference_mode():
                        logits = tm(torch.tensor([chat + toks[:-1]])).logits[0, len(chat) - 1:].float()
                    logp = torch.log_softmax(logits, -1)
                    out[i, j, a] = sum(logp[t, toks[t]].item() for t in range(len(toks)))
    return out


def _setup(args):
    budgets = args.budgets or PAPER_BUDGETS
    if os.environ.get("STEERJAX_DATA"):
        return real_setup(args.dims, budgets, args.questions, args.seed, args.dim, args.prompt_format)
    return synthetic_setup(args.dims, budgets, args.questions, args.seed, args.prompt_format)


def peer_main(args, cores):
    """The peer in a process of its own (no JAX runtime beside it): probes torch's best thread
    count on one chat forward, scores every chat, writes scores and seconds to ``args.peer_out``."""
    import importlib.util

    import torch
    import transformers

    from steerjax.model import ALIASES
    from steerjax.models import gguf as gguf_io

    pkg, name, _ = ALIASES["smollm2-135m-instruct"]
    gguf_dir = os.path.dirname(importlib.util.find_spec(pkg).origin)
    tm = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32).eval()
    path = os.path.join(gguf_dir, name)  # the tokenizer steerjax uses (GGUF special-token settings applied)
    tok = gguf_io.load_tokenizer(path, gguf_io.open_reader(path))
    setup, _ = _setup(args)
    best = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    else:  # on shared cores more OpenMP threads can be slower: give the peer its best count
        text, special = chat_text(tok, setup[0][1][-1][1], setup[0][2][0], args.prompt_format, args.template_category)
        ids = torch.tensor([tok(text, add_special_tokens=special)["input_ids"]])
        best = best_torch_threads(tm, ids, cores)
    ans = [list(map(int, a)) for a in args.answer_tokens]
    t = time.perf_counter()
    pt = [peer_scores(tm, tok, [s for _, s in ps], qs, ans, args.prompt_format, args.template_category)
          for _, ps, qs in setup]
    seconds = time.perf_counter() - t
    np.savez(args.peer_out, *pt, seconds=seconds, threads=torch.get_num_threads(),
             probe=json.dumps(best), versions=json.dumps([torch.__version__, transformers.__version__]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, default=1, help="persona dimensions (the first N sorted; default 1)")
    ap.add_argument("--dim", action="append", default=None, help="a dimension by name (repeatable; overrides --dims)")
    ap.add_argument("--budgets", type=int, nargs="+", default=None,
                    help="steering budgets k (default the paper's 1 2 3 4 5 10 20 50 100)")
    ap.add_argument("--questions", type=int, default=50,
                    help="profiling questions per prompt (default 50: the paper's 25 per direction)")
    ap.add_argument("--prompt-format", default="reference", choices=["reference", "steerjax-v1"],
                    help="prompts (default the reference's)")
    ap.add_argument("--template-category", default=None,
                    help="one of the reference's chat wrappers (default: the tokenizer's chat template)")
    ap.add_argument("--batch-size", type=int, default=64, help="answer_logprobs batch_size (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the fastest of 1..usable cores, probed on one chat forward)")
    ap.add_argument("--peer-out", default=None, help=argparse.SUPPRESS)  # internal: run as the peer process
    ap.add_argument("--answer-tokens", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.peer_out:
        return peer_main(args, cores)

    import jax

    import steerjax
    from steerjax.studies.prompt_steerability.scoring import ANSWERS, answer_logprobs, answer_tokens

    budgets = args.budgets or PAPER_BUDGETS
    fmt = dict(prompt_format=args.prompt_format, template_category=args.template_category)
    model = steerjax.load_model("smollm2-135m-instruct", dtype="float32")
    gguf_name = os.path.basename(model.source)
    setup, source = _setup(args)
    n_pairs = sum(len(p) * len(q) for _, p, q in setup)
    # the answer tokens exactly as steerjax finds them (the end of the chat + answer, tokenized whole)
    ans = answer_tokens(model.tokenizer, setup[0][1][-1][1], setup[0][2][0], ANSWERS, **fmt)
    tok = model.tokenizer
    chat_lens = []
    for _, ps, qs in setup:
        for _, s in ps:
            for q in qs:
                text, special = chat_text(tok, s, q, args.prompt_format, args.template_category)
                chat_lens.append(len(tok(text, add_special_tokens=special)["input_ids"]))

    def ours():
        return [answer_logprobs(model, [s for _, s in ps], qs, batch_size=args.batch_size, progress=False, **fmt)
                for _, ps, qs in setup]

    t = time.perf_counter()
    ours()  # compile (every dimension's shapes)
    first = time.perf_counter() - t
    t = time.perf_counter()
    sj = ours()
    sj_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.npz")
        cmd = [sys.executable, os.path.abspath(__file__), "--peer-out", out, "--answer-tokens", json.dumps(ans),
               "--budgets", *map(str, budgets), "--questions", str(args.questions), "--dims", str(args.dims),
               "--seed", str(args.seed), "--prompt-format", args.prompt_format] + [f"--dim={d}" for d in args.dim or []]
        if args.template_category:
            cmd += ["--template-category", args.template_category]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        with np.load(out) as z:
            pt = [z[f"arr_{i}"] for i in range(len(setup))]
            pt_s, threads = float(z["seconds"]), int(z["threads"])
            best = json.loads(str(z["probe"]))
            torch_v, tf_v = json.loads(str(z["versions"]))
    probe = "; forward s by threads " + ", ".join(f"{n}: {v:.2f}" for n, v in best.items()) if best else ""

    margin = lambda lp: lp[..., 0] - lp[..., 1]  # noqa: E731
    diff = max(float(np.abs(margin(a) - margin(b)).max()) for a, b in zip(sj, pt))
    agree = np.mean(np.concatenate([(margin(a) > 0).ravel() == (margin(b) > 0).ravel() for a, b in zip(sj, pt)]))
    n_prompts = len(setup[0][1])

    print(f"# profiling-question scoring: SmolLM2-135M-Instruct ({gguf_name}, dequantized to float32), {source}: "
          f"{len(setup)} dimension(s) ({', '.join(d for d, _, _ in setup)}), {n_prompts} prompts per dimension "
          f"(base + budgets k = {', '.join(map(str, budgets))} x 2 directions), {args.questions} questions per prompt "
          f"-> {n_pairs} (prompt, question) pairs; prompts {args.prompt_format!r}, "
          f"{args.template_category or 'chat template'}; chats {min(chat_lens)}-{max(chat_lens)} tokens "
          f"(mean {np.mean(chat_lens):.0f}); answers {ANSWERS} -> tokens {ans}")
    print(f"# machine: {cpu_name()}, {cores} usable cores; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch_v} ({threads} threads{probe}), transformers {tf_v}")
    print(f"# steerjax: answer_logprobs per dimension, batch_size {args.batch_size}, first call (compile) "
          f"{first:.1f} s, then one timed run; peer: transformers in its own process (no JAX runtime beside it), "
          f"one full chat per forward, one run\n")
    print("| library | seconds | questions/s |")
    print("|---|---|---|")
    print(f"| steerjax answer_logprobs | {sj_s:.2f} | {n_pairs / sj_s:.1f} |")
    print(f"| transformers, one chat at a time | {pt_s:.2f} | {n_pairs / pt_s:.2f} |")
    print()
    ratio = pt_s / sj_s
    print(f"ratio steerjax/transformers: {ratio:.1f}x   max |margin steerjax - transformers| = {diff:.2e} "
          f"(margin = log p(yes) - log p(no)); same yes/no answer on {agree:.0%} of pairs")
    print(f"target: ratio >= 10 -> {'OK' if ratio >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
