"""The demo's orchestration end to end, shortened (the full run is `make demo`), and its grounding helpers."""

from __future__ import annotations

import html
import json

import pytest

from audiotune.demo import DemoSettings, run_demo
from audiotune.errors import ConfigError
from audiotune.grounding import derangement, repeat_summary
from audiotune.metrics import max_ngram_repeats


def test_max_ngram_repeats_counts_loops_not_punctuation():
    assert max_ngram_repeats("hear a beep repeated hear a beep repeated hear a beep") == 3
    assert max_ngram_repeats("A rising sweep followed by a low rumble.") == 1
    assert max_ngram_repeats("A beep, a beep. A BEEP!") == 2  # "a beep a" and "beep a beep" twice each
    assert max_ngram_repeats("two words") == 0
    assert max_ngram_repeats("a b a b a b", n=2) == 3
    assert repeat_summary({"x": "a tone", "y": "a b c a b c a b c"}) == (3, "y")


def test_derangement_moves_every_clip_and_is_fixed_by_its_seed():
    for n in range(2, 25):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
    assert derangement(20, seed=1) == derangement(20, seed=1) != derangement(20, seed=2)
    with pytest.raises(ConfigError, match="at least 2 clips"):
        derangement(1)


@pytest.mark.slow
def test_short_demo_writes_every_artefact(tmp_path):
    stages: list[str] = []
    result = run_demo(DemoSettings(out=str(tmp_path), clips=40, split_fractions=(0.8, 0.1, 0.1), max_steps=6,
                                   batch_size=4, warmup_steps=1, eval_clips=4, max_new_tokens=8),
                      on_stage=stages.append)
    assert stages == ["synthesise data", "build tiny AF3", "fine-tune (LoRA)", "evaluate base vs tuned",
                      "grounding check", "infer (batched)", "merge", "pipeline"]
    for name in ("tuned/adapter_model.safetensors", "merged/model.safetensors", "predictions.jsonl",
                 "metrics.json", "report.md", "report.html", "plots/loss.png", "grounding.json"):
        assert (tmp_path / name).exists(), name
    assert [m.name for m in result.evaluation.models] == ["base", "tuned"]
    assert {"BLEU-4", "METEOR", "CIDEr-D"} <= set(result.base) and {"BLEU-4", "CIDEr-D"} <= set(result.tuned)
    report = (tmp_path / "report.md").read_text()
    assert "| CIDEr-D |" in report and "| base | tuned |" in report and "pipeline output" in report
    assert len(result.samples) == 4 and isinstance(result.pipeline_output, str)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["model"] for r in rows} == {"base", "tuned"}

    # Grounding: the tuned model's own-audio score is the evaluation's, on the very same references; the
    # swapped run gave every clip another clip's audio and kept the clip's references.
    tuned = {r["id"]: r for r in rows if r["model"] == "tuned"}
    g = result.grounding
    assert g.metric == "CIDEr-D" and g.own == pytest.approx(result.tuned["CIDEr-D"])
    assert g.references == {k: r["references"] for k, r in tuned.items()}
    assert g.own_predictions == {k: r["prediction"] for k, r in tuned.items()}
    assert set(g.other_predictions) == set(tuned) and set(g.pairs) == set(tuned)
    assert sorted(g.pairs.values()) == sorted(tuned) and all(k != v for k, v in g.pairs.items())
    assert g.other >= 0.0
    saved = json.loads((tmp_path / "grounding.json").read_text())
    assert saved["other"] == g.other and saved["pairs"] == g.pairs and saved["references"] == g.references
    assert result.max_repeats == max(max_ngram_repeats(r["prediction"]) for r in tuned.values())
    page = html.unescape((tmp_path / "report.html").read_text())
    for text in (report, page):
        assert f"{g.own:.3f} with each clip's own audio vs {g.other:.3f} with another clip's audio" in text
        assert f"at most {result.max_repeats} occurrence(s) of one 3-gram" in text
