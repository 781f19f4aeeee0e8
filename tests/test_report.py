"""The report renders in a real browser: not blank, every plot loaded; tables sort worst first."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from audiotune.report import EvalReport, ModelScores
from audiotune.generate import examples_from_audio
from audiotune.report import write_report
from tests.conftest import tone

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": s, "loss": 6.0 - 0.1 * s} for s in range(1, 21)]
    history += [{"step": 10, "eval_loss": 5.2, "eval_gen_CIDEr-D": 0.1, "eval_gen_BLEU-4": 0.05},
                {"step": 20, "eval_loss": 4.7, "eval_gen_CIDEr-D": 0.4, "eval_gen_BLEU-4": 0.12}]
    (run / "train_metrics.json").write_text(json.dumps({"log_history": history}))
    (run / "run_config.yaml").write_text("model: tiny\nlearning_rate: 0.002\n")
    refs = {"c1": ["A low tone."], "c2": ["Three beeps."], "c3": ["A rising sweep."]}
    base = ModelScores("base", {"BLEU-4": 0.0, "CIDEr-D": 0.0},
                       [{"id": k, "references": v, "prediction": "paus paus", "scores": {"CIDEr-D": 0.0}}
                        for k, v in refs.items()])
    tuned_scores = {"c1": 1.2, "c2": 0.1, "c3": 0.6}
    tuned = ModelScores("tuned", {"BLEU-4": 0.2, "CIDEr-D": 0.63},
                        [{"id": k, "references": v, "prediction": f"prediction for {k}",
                          "scores": {"CIDEr-D": tuned_scores[k]}} for k, v in refs.items()])
    report = EvalReport(tmp_path, "caption", [base, tuned], ["SPICE/SPIDEr skipped: models not found."], [])
    audio = examples_from_audio([tone(1.0, 220), tone(1.0, 880)], "Describe the audio.", ids=["c1", "c2"])
    return write_report(report, audio, 16000, training_run=run, summary={"model": "tiny AF3"})


def test_markdown_has_tables_plots_and_worst_first(tmp_path):
    md_path, _ = _report(tmp_path)
    md = md_path.read_text()
    assert "| CIDEr-D | 0.0000 | 0.6300 |" in md
    assert "![loss](plots/loss.png)" in md and "![metrics](plots/metrics.png)" in md
    order = [m.group(1) for m in re.finditer(r"^\| (c\d) \|", md, re.M)]
    assert order == ["c2", "c3", "c1"]  # worst CIDEr-D of the tuned model first
    assert "SPICE/SPIDEr skipped" in md and "learning_rate: 0.002" in md
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 1000


@pytest.mark.slow
def test_html_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: scripts/system-deps.sh --test installs it")
        pytest.skip("chromium not installed (make test installs it)")
    _, html_path = _report(tmp_path)
    html = html_path.read_text()
    assert html.count("<img") == 2 and html.count("<audio") == 2
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, *profile, "--virtual-time-budget=5000", "--dump-dom",
                          html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('data-loaded="yes"') == 2 and 'data-loaded="no"' not in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, *profile, "--window-size=1200,1600", f"--screenshot={shot}",
                    html_path.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # not a blank page
    assert (pixels.min(axis=2) < 0.5).mean() > 0.01  # a fair amount of dark ink (text, plot lines)
    # The plots are drawn, not only their captions: matplotlib's default blue lines show in the page.
    blue = (pixels[..., 2] - pixels[..., 0] > 0.3) & (pixels[..., 2] > 0.5)
    assert blue.mean() > 5e-4, f"{blue.mean():.2e} of the page is plot blue"
