"""The demo's orchestration end to end, shortened (the full run is `make demo`)."""

from __future__ import annotations

import json

import pytest

from audiotune.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_short_demo_writes_every_artefact(tmp_path):
    stages: list[str] = []
    result = run_demo(DemoSettings(out=str(tmp_path), clips=40, max_steps=6, batch_size=4, eval_clips=4,
                                   max_new_tokens=8), on_stage=stages.append)
    assert stages == ["synthesise data", "build tiny AF3", "fine-tune (LoRA)", "evaluate base vs tuned",
                      "infer (batched)", "merge", "pipeline"]
    for name in ("tuned/adapter_model.safetensors", "merged/model.safetensors", "predictions.jsonl",
                 "metrics.json", "report.md", "report.html", "plots/loss.png"):
        assert (tmp_path / name).exists(), name
    assert [m.name for m in result.evaluation.models] == ["base", "tuned"]
    assert {"BLEU-4", "METEOR", "CIDEr-D"} <= set(result.base) and {"BLEU-4", "CIDEr-D"} <= set(result.tuned)
    report = (tmp_path / "report.md").read_text()
    assert "| CIDEr-D |" in report and "| base | tuned |" in report and "pipeline output" in report
    assert len(result.samples) == 4 and isinstance(result.pipeline_output, str)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["model"] for r in rows} == {"base", "tuned"}
