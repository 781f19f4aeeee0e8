"""The demo's orchestration end to end, shortened (the full run is `make demo`)."""

from __future__ import annotations

import pytest

from audiotune.demo import DemoSettings, run_demo
from audiotune.evaluate import CAPTION_METRICS


@pytest.mark.slow
def test_short_demo_writes_every_artefact(tmp_path):
    stages: list[str] = []
    result = run_demo(DemoSettings(out=str(tmp_path), clips=40, max_steps=6, batch_size=4, eval_clips=4,
                                   max_new_tokens=8), on_stage=stages.append)
    assert stages == ["synthesise data", "build tiny AF3", "fine-tune (LoRA)", "evaluate base vs tuned",
                      "infer (batched)", "merge", "pipeline"]
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors", "predictions_base.jsonl",
                 "predictions_tuned.jsonl", "report.md"):
        assert (tmp_path / name).exists(), name
    assert set(CAPTION_METRICS) <= set(result.base) and set(CAPTION_METRICS) <= set(result.tuned)
    report = result.report.read_text()
    assert "| CIDEr-D |" in report and "| base | tuned |" in report
    assert len(result.samples) == 4 and isinstance(result.pipeline_output, str)
    assert len((tmp_path / "predictions_tuned.jsonl").read_text().splitlines()) == 4
