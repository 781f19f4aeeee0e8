"""The regression view (#21.4): base and adapter on several benchmarks in one run, each difference judged against
its noise by a paired bootstrap; the verdicts checked on rows whose answer is plain by hand."""

from __future__ import annotations

import json

import pytest

from audiotune.config import EvalConfig
from audiotune.evaluate import evaluate_benchmarks
from audiotune.metrics import bootstrap_interval
from audiotune.regression import compare
from audiotune.report import EvalReport, ModelScores
from audiotune.ui.runs import load_regression
from tests.test_benchmark_presets import FIXTURES
from tests.test_engines import random_adapter  # noqa: F401  (the module fixture: a LoRA that changes answers)


def _rows(values, metric="accuracy", reference="a b c d"):
    return [{"id": str(i), "references": [reference], "scores": {metric: v}} for i, v in enumerate(values)]


def _report(task, metric, base, tuned):
    models = [ModelScores("base", {metric: sum(base) / len(base)}, _rows(base, metric)),
              ModelScores("tuned", {metric: sum(tuned) / len(tuned)}, _rows(tuned, metric))]
    return EvalReport("out", task, models, [], [])


def test_a_difference_counts_only_outside_its_paired_interval():
    """30 clips. Tuned right on all where the base is right on 10: +0.667, every resample agrees: better. Tuned
    wrong on one clip the base got right: -0.033, and most resamples keep that clip or not: within noise. WER: the
    tuned model makes one error in four words on every clip where the base makes none: +0.25, worse (WER is lower
    is better)."""
    views = compare({"mcq-better": _report("mcq", "accuracy", [1.0] * 10 + [0.0] * 20, [1.0] * 30),
                     "mcq-noise": _report("mcq", "accuracy", [1.0] * 30, [0.0] + [1.0] * 29),
                     "asr-worse": _report("asr", "WER", [0.0] * 30, [0.25] * 30)})
    assert views["mcq-better"]["tuned"].verdict == "better"
    assert views["mcq-better"]["tuned"].difference == pytest.approx(2 / 3)
    assert views["mcq-noise"]["tuned"].verdict == "within noise"
    assert views["asr-worse"]["tuned"].verdict == "worse" and views["asr-worse"]["tuned"].interval == (0.25, 0.25)
    assert views["mcq-better"]["base"].verdict == "" and views["mcq-better"]["base"].difference is None


def test_benchmarks_are_given_comma_separated_as_the_readme_writes_them():
    from audiotune.cli_args import parse

    cfg, _ = parse(EvalConfig, ["--model", "m", "--benchmarks", "mmau-test-mini,librispeech-test-clean"], "eval")
    assert cfg.benchmarks == ["mmau-test-mini", "librispeech-test-clean"]


def test_wer_is_resampled_as_a_corpus_ratio():
    """Two clips: 1 error in 1 word (WER 1.0) and 0 in 9 (WER 0). A resample holds the short clip twice (WER 1,
    a quarter of them), the long one twice (0, a quarter) or one of each: 1 error in 10 words, 0.1, where a mean
    of clip WERs would say 0.5. So the middle 20% of resamples is 0.1, and the 95% interval spans 0 to 1."""
    rows = [{"id": "0", "references": ["word"], "scores": {"WER": 1.0}},
            {"id": "1", "references": ["one two three four five six seven eight nine"], "scores": {"WER": 0.0}}]
    assert bootstrap_interval(rows, "WER", normalizer="simple", level=0.2) == pytest.approx((0.1, 0.1))
    assert bootstrap_interval(rows, "WER", normalizer="simple") == (0.0, 1.0)
    assert bootstrap_interval(rows[:1], "WER") is None  # one clip: no interval


def test_base_and_adapter_on_two_benchmarks_in_one_view(micro_af3, random_adapter, tmp_path):  # noqa: F811
    copies = tmp_path / "copies"
    for name in ("mmau-test-mini", "librispeech-test-clean"):
        FIXTURES[name](copies / name)
    cfg = EvalConfig.from_flat(model=str(micro_af3), benchmarks=["mmau-test-mini", "librispeech-test-clean"],
                               dataset=str(copies), adapters=[str(random_adapter)], compare=True,
                               out=str(tmp_path / "out"), max_new_tokens=3, with_meteor=False)
    reports, md, page = evaluate_benchmarks(cfg)
    assert list(reports) == ["mmau-test-mini", "librispeech-test-clean"]
    view = json.loads((tmp_path / "out" / "regression.json").read_text())
    assert view["base"] == "base" and view["metrics"] == {"mmau-test-mini": "accuracy",
                                                          "librispeech-test-clean": "WER"}
    for name, row in view["table"].items():
        assert set(row) == {"base", random_adapter.name}
        tuned, base = row[random_adapter.name], row["base"]
        assert tuned["difference"] == pytest.approx(tuned["value"] - base["value"])
        assert tuned["verdict"] in ("better", "worse", "within noise")
        assert (tmp_path / "out" / name / "report.html").exists()  # each benchmark keeps its own report
    assert "mmau-test-mini" in md.read_text() and "<table>" in page.read_text()
    markdown, rows, models = load_regression(tmp_path / "out")  # what the UI's Evaluate tab shows for the folder
    assert models == ["base", random_adapter.name] and [r[:2] for r in rows] == [
        ["mmau-test-mini", "accuracy"], ["librispeech-test-clean", "WER"]]
    assert rows[1][3].startswith(f"{view['table']['librispeech-test-clean'][random_adapter.name]['value']:.4f} (")
