"""The report's parts on their own: the concept check, Spearman intervals, and the HTML page
(self-contained, every number tagged with its JSON key and printed from it)."""

from __future__ import annotations

import html.parser
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from steerjax.errors import DataError
from steerjax.report import cell_text, check_concepts, preset_concepts, render, shared_concepts, spearman, spearman_ci
from steerjax.report.stats import ranks
from tests.helpers import data_dir

SOURCES = {
    "prompt-steering statements": {"agreeableness", "narcissism", "openness", "only-prompt"},
    "Anthropic persona dataset": {"agreeableness", "narcissism", "openness", "only-anthropic"},
    "steering-bench persona prompts": {"agreeableness", "narcissism", "openness"},
}


def test_concept_check_names_the_source_and_the_closest_names():
    assert shared_concepts(SOURCES) == ["agreeableness", "narcissism", "openness"]
    assert check_concepts(["openness", "narcissism"], sources=SOURCES) == {"openness": [], "narcissism": []}
    with pytest.raises(DataError, match=r"unknown concept 'agreeablenes'; did you mean 'agreeableness'"):
        check_concepts(["agreeablenes"], sources=SOURCES)
    with pytest.raises(DataError, match=r"'only-prompt' is missing from Anthropic persona dataset .*--allow-partial"):
        check_concepts(["openness", "only-prompt"], sources=SOURCES)
    partial = check_concepts(["only-prompt"], sources=SOURCES, allow_partial=True)
    assert partial == {"only-prompt": ["Anthropic persona dataset", "steering-bench persona prompts"]}
    with pytest.raises(DataError, match="more than once"):
        check_concepts(["openness", "openness"], sources=SOURCES)
    with pytest.raises(DataError, match="names no concept"):
        check_concepts([], sources=SOURCES)
    with pytest.raises(DataError, match="unknown preset"):
        preset_concepts("medium", SOURCES)
    # presets take Miehling et al.'s paper dimensions, in the paper's order
    assert preset_concepts("smoke", SOURCES) == ["agreeableness", "openness"]
    assert preset_concepts("full", SOURCES) == ["agreeableness", "narcissism", "openness"]


@pytest.mark.requires_data
def test_presets_on_the_real_data():
    if data_dir() is None:
        pytest.skip("needs STEERJAX_DATA")
    shared = shared_concepts()
    assert len(shared) == 68  # of the 70 dimensions, 68 also have steering-bench persona prompts
    quick = preset_concepts("quick")
    assert len(quick) == 8 and set(quick) <= set(shared)
    assert check_concepts(quick) == {c: [] for c in quick}


def test_spearman_and_its_bootstrap_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = x + rng.normal(scale=0.8, size=20)
    y[3] = y[5]  # a tie
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    out = spearman_ci(x, y, n_boot=500, seed=0)
    assert out["n"] == 20 and out["lo"] < out["rho"] < out["hi"] and out["undefined"] == 0
    assert spearman_ci(x, y, n_boot=500, seed=0) == out  # seeded
    # the bootstrap by hand: resampled pairs, scipy's rho, percentiles
    idx = np.random.default_rng(0).integers(0, 20, size=(500, 20))
    hand = [scipy_stats.spearmanr(x[i], y[i]).statistic for i in idx]
    assert [out["lo"], out["hi"]] == pytest.approx(list(np.quantile(hand, [0.025, 0.975])), abs=1e-12)
    few = spearman_ci([1.0, 2.0], [2.0, 1.0])
    assert few["n"] == 2 and np.isnan(few["rho"]) and np.isnan(few["lo"])
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))  # a constant side


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.keyed, self.images, self.links, self.scripts = {}, [], [], 0
        self._key = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for a in ("href", "src"):
            if a in attrs and tag != "img":
                self.links.append(attrs[a])
        self._key = attrs.get("data-key")

    def handle_data(self, data):
        if self._key is not None:
            self.keyed[self._key] = self.keyed.get(self._key, "") + data

    def handle_endtag(self, tag):
        self._key = None


def test_page_is_self_contained_and_prints_the_json(tmp_path):
    from steerjax.plotting import save_figure, subplots

    fig, ax = subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "scatter.png")
    report = {
        "title": "steerjax report: tiny", "model": {"source": "tiny", "family": "llama", "num_layers": 2},
        "command": "steerjax report tiny --preset smoke", "seconds": 12.34, "versions": {"jax": "0.0"},
        "data_sources": [{"name": "prompt-steering", "repo": "IBM/prompt-steering", "commit": "abc"}],
        "concepts": ["a <b>", "c"],
        "measures": [{"id": "prompt", "title": "Prompt steerability", "paper": "Miehling et al. 2024",
                      "columns": [{"key": "index_positive", "label": "index +", "help": "toward the persona"},
                                  {"key": "n", "label": "n"}],
                      "rows": {"a <b>": {"index_positive": {"value": 0.5, "lo": 0.25, "hi": 0.75}, "n": 3},
                               "c": {"index_positive": float("nan"), "n": None}}}],
        "correlations": [{"x": "prompt", "y": "activation", "n": 2, "rho": float("nan"), "lo": None, "hi": None}],
        "figures": [{"file": "scatter.png", "caption": "prompt vs activation"}],
        "deviations": {"prompt": [{"element": "W1", "reference": "formula", "here": "exact"}]},
        "runs": {"prompt_steerability": "prompt_steerability"},
    }
    page = render(report, str(tmp_path))
    parsed = _Page()
    parsed.feed(page)
    assert parsed.scripts == 0 and len(parsed.images) == 1 and parsed.images[0].startswith("data:image/png;base64,")
    assert all(not link.startswith(("http:", "https:", "//")) for link in parsed.links)
    assert "&lt;b&gt;" in page  # names are escaped
    doc = json.loads(json.dumps(report, default=str))
    for key, text in parsed.keyed.items():
        if key == "seconds":
            assert text == "12.3"
            continue
        head, *rest = key.split("/")
        if head == "correlations":
            c = doc["correlations"][int(rest[0])]
            rho = {"value": c["rho"], "lo": c["lo"], "hi": c["hi"]}
            want = cell_text(rho) if rest[1] == "rho" else cell_text(c["n"])
        else:
            measure = next(m for m in doc["measures"] if m["id"] == head)
            want = cell_text(measure["rows"][rest[0]].get(rest[1]))
        assert text == want, key
    assert parsed.keyed["prompt/a <b>/index_positive"] == "0.500 [0.250, 0.750]"
    assert parsed.keyed["prompt/c/index_positive"] == "n/a"
