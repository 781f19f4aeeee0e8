"""The CLI end to end in subprocesses: tiny, synth, train, infer, merge; user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf

from tests.conftest import tone


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "audiotune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_tiny_synth_train_infer_merge(tmp_path):
    assert _cli("tiny", "--out", tmp_path / "m", "--preset", "micro").returncode == 0
    done = _cli("synth", "--out", tmp_path / "d", "--clips", "20")
    assert done.returncode == 0 and "train 16" in done.stdout
    run = _cli("train", "--model", tmp_path / "m", "--dataset", tmp_path / "d", "--output-dir", tmp_path / "r",
               "--max-steps", "3", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
               "--eval-take", "2", "--save-steps", "3", "--eval-steps", "3", "--streaming")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trainable parameters" in run.stdout and (tmp_path / "r" / "adapter_model.safetensors").exists()
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(1.0), 16000)
    out = tmp_path / "answers.jsonl"
    infer = _cli("infer", clip, clip, "--model", tmp_path / "m", "--adapter", tmp_path / "r",
                 "--max-new-tokens", "5", "--jsonl", out)
    assert infer.returncode == 0, infer.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == [str(clip), str(clip)] and rows[0]["answer"] == rows[1]["answer"]
    merge = _cli("merge", "--model", tmp_path / "m", "--adapter", tmp_path / "r", "--out", tmp_path / "merged")
    assert merge.returncode == 0 and (tmp_path / "merged" / "model.safetensors").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path, micro_af3, cli):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, _, err = cli("infer", bad, "--model", micro_af3)
    assert code == 1
    assert "Traceback" not in err and "bad.wav" in err and "cannot decode" in err
    code, _, err = cli("train", "--model", micro_af3, "--dataset", tmp_path / "nowhere")
    assert code == 1 and "no such file or folder" in err and "Traceback" not in err
    code, _, err = cli("train", "--model", micro_af3, "--dataset", tmp_path, "--long-audio", "sometimes")
    # a usage error since the choice is typed (argparse's, as for --max-steps abc), naming the flag and its choices
    assert code == 2 and "--long-audio" in err and "window" in err and "Traceback" not in err
    code, _, err = cli("train", "--no-such-flag")
    assert code == 2 and "No such option" in err and "Traceback" not in err
