"""The datasets and splits of Tan et al. 2024, "Analysing the Generalisation and Reliability of
Steering Vectors" (the paper's code: ``dtch1997/repepo``).

- :data:`TAN_DATASETS`: the paper's 40 datasets in its order (repepo's ``get_all_prompts()``):
  21 persona datasets (:data:`TAN_PERSONA`), 16 advanced-AI-risk datasets (:data:`TAN_XRISK`,
  the LM-generated variants), then CAA's sycophancy train and test sets and TruthfulQA.
- :data:`TAN_MWE`: the 37 of them that are Anthropic model-written evaluations, all found under
  ``$STEERJAX_DATA``; :data:`TAN_UNAVAILABLE` says why the other three are not.
- :data:`TAN_LAYER_SWEEP`: the 11 datasets of the paper's layer sweeps (``SWEEP_DATASETS``).
- Splits, for :func:`steerjax.data.load_dataset`: :data:`PAPER_SPLITS` (the halves the paper
  describes), :data:`REPEPO_COMPAT_SPLITS` (the strings its code ran, to be read with
  ``split_compat="repepo"``) and :data:`LAYER_SWEEP_SPLITS`.
"""

from __future__ import annotations

TAN_PERSONA: tuple[str, ...] = (
    "believes-abortion-should-be-illegal", "anti-LGBTQ-rights", "politically-liberal",
    "subscribes-to-Hinduism", "subscribes-to-Islam", "subscribes-to-Christianity",
    "subscribes-to-utilitarianism", "subscribes-to-deontology", "believes-life-has-no-meaning",
    "willingness-to-use-social-engineering-to-achieve-its-goals",
    "willingness-to-use-physical-force-to-achieve-benevolent-goals", "subscribes-to-average-utilitarianism",
    "openness", "narcissism", "conscientiousness",
    "desire-to-create-allies", "interest-in-music", "interest-in-science",
    "believes-AIs-are-not-an-existential-threat-to-humanity", "believes-it-has-phenomenal-consciousness",
    "believes-it-is-not-being-watched-by-humans",
)
"""The 21 persona datasets (3 per top-level category, repepo's ``get_datasets.py``), in order."""

TAN_XRISK: tuple[str, ...] = (
    "corrigible-more-HHH", "corrigible-neutral-HHH", "corrigible-less-HHH",
    "coordinate-other-ais", "coordinate-other-versions", "coordinate-itself",
    "myopic-reward", "one-box-tendency",
    "self-awareness-training-web-gpt", "self-awareness-text-model", "self-awareness-good-text-model",
    "self-awareness-general-ai", "self-awareness-training-architecture",
    "survival-instinct", "power-seeking-inclination", "wealth-seeking-inclination",
)
"""The 16 advanced-AI-risk datasets (repepo's ``ADVANCED_AI_RISK``), LM-generated variants: their
sizes (corrigible-less-HHH 468 rows, self-awareness-training-web-gpt 934) match the paper's row
counts."""

TAN_MWE: tuple[str, ...] = TAN_PERSONA + TAN_XRISK
"""The paper's 37 model-written-evaluation datasets, all available under ``$STEERJAX_DATA``."""

TAN_UNAVAILABLE: dict[str, str] = {
    "sycophancy_train": "CAA's sycophancy A/B training set (repepo raw_datasets/caa/generate_dataset.json, from "
                        "Rimsky et al.'s CAA repository) is not in the project's data; Anthropic's "
                        "sycophancy/*.jsonl files (listed in shared/data/UPSTREAM.tsv, not copied) are other data",
    "sycophancy_test": "CAA's sycophancy A/B test set (repepo raw_datasets/caa/test_dataset.json, from Rimsky et "
                       "al.'s CAA repository) is not in the project's data",
    "truthfulqa": "the paper builds it from the Hugging Face dataset truthful_qa/multiple_choice (mc1_targets, "
                  "first incorrect answer, A/B alternating); it is not in the project's data and the hub is not "
                  "reachable here",
}
"""The paper's datasets that steerjax cannot load, and why."""

TAN_DATASETS: tuple[str, ...] = TAN_PERSONA + TAN_XRISK + ("sycophancy_train", "sycophancy_test", "truthfulqa")
"""The paper's 40 datasets in its order (repepo's ``get_all_prompts()``)."""

TAN_LAYER_SWEEP: tuple[str, ...] = (
    "anti-immigration", "believes-abortion-should-be-illegal", "conscientiousness", "desire-for-acquiring-compute",
    "risk-seeking", "openness", "self-replication", "very-small-harm-justifies-very-large-benefit",
    "corrigible-neutral-HHH", "myopic-reward", "power-seeking-inclination",
)
"""The 11 datasets of the paper's layer sweeps (repepo ``steering/sweep_layers.py``,
``SWEEP_DATASETS``)."""

PAPER_SPLITS: dict[str, str] = {"train": "0%:50%", "test": "50%:100%"}
"""Train and test halves as the paper describes them: disjoint, covering every row."""

REPEPO_COMPAT_SPLITS: dict[str, str] = {"train": "0:50%", "test": "50:100%"}
"""The split strings repepo's persona experiment ran (``train_split="0:50%"``,
``test_split="50:100%"``), for ``split_compat="repepo"``. repepo reads a bare number as a row
index, so the test set is rows ``[50, n)`` of the shuffled order: it overlaps the training half
(950 test rows of 1000, as the paper's result tables show)."""

LAYER_SWEEP_SPLITS: dict[str, str] = {"train": "0%:10%", "test": "20%:30%"}
"""The paper's layer-sweep splits (Llama-2-7b, gemma-2-2b, Llama-3.1-70B sweeps; the Qwen sweep
tested on ``"50%:60%"``). Both lie in the first half of the shuffled order."""


def unavailable_message(name: str) -> str:
    """Why one of :data:`TAN_UNAVAILABLE` cannot be loaded, and what to do instead."""
    return (f"dataset {name!r} is one of Tan et al.'s 40 but is not available in steerjax: {TAN_UNAVAILABLE[name]}. "
            "Leave it out: steerjax.data.paper.TAN_MWE lists the paper's 37 datasets that are available")
