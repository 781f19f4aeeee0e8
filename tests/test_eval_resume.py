"""A long evaluation survives being killed (#21 4b): answers are saved batch by batch and ``--resume`` continues.

The interrupted run is a real ``audiotune eval`` process killed with SIGKILL once it has saved a few batches (the
test waits on the file's state, then kills); the resumed run must write exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from audiotune.answer_log import PARTIAL, AnswerLog
from audiotune.config import EvalConfig
from audiotune.errors import ConfigError
from audiotune.evaluate import run_evaluation

ROWS = 24
OPTIONS = dict(split="train", take=ROWS, batch_size=1, max_new_tokens=6, with_meteor=False)


def _config(model, data, out, **changes) -> EvalConfig:
    return EvalConfig.from_flat(model=str(model), dataset=str(data), out=str(out), **{**OPTIONS, **changes}).validate()


def _answer_lines(path) -> int:
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def _killed_part_way(model, data, out) -> int:
    """Run ``audiotune eval`` in a child, SIGKILL it after it has saved 3 answers; the number it had saved."""
    command = [sys.executable, "-m", "audiotune", "eval", "--model", str(model), "--dataset", str(data),
               "--out", str(out), "--split", "train", "--take", str(ROWS), "--batch-size", "1",
               "--max-new-tokens", "6", "--with-meteor", "false"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = out / PARTIAL
    deadline = time.monotonic() + 300
    while _answer_lines(partial) < 3:
        assert child.poll() is None, f"eval exited before it was killed: {child.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "eval saved no answers within 300 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    saved = _answer_lines(partial)
    assert child.returncode == -signal.SIGKILL and 3 <= saved < ROWS, (child.returncode, saved)
    return saved


def test_a_killed_evaluation_resumes_to_what_an_uninterrupted_one_writes(micro_af3, synth_data, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_evaluation(_config(micro_af3, synth_data, whole))
    assert not (whole / PARTIAL).exists()  # a finished run leaves predictions.jsonl only

    saved = _killed_part_way(micro_af3, synth_data, resumed)
    assert not (resumed / "predictions.jsonl").exists()
    with pytest.raises(ConfigError, match="interrupted evaluation: pass --resume"):
        run_evaluation(_config(micro_af3, synth_data, resumed))  # never overwritten without being asked
    with pytest.raises(ConfigError, match=r"--resume: .* written with other generation"):
        run_evaluation(_config(micro_af3, synth_data, resumed, max_new_tokens=7, resume=True))
    assert _answer_lines(resumed / PARTIAL) == saved  # a refused resume keeps what was saved

    batches: list[int] = []
    run_evaluation(_config(micro_af3, synth_data, resumed, resume=True), on_batch=batches.append)
    assert batches[0] == saved and sum(batches) == ROWS  # the saved rows were not generated again
    assert (resumed / "predictions.jsonl").read_text() == (whole / "predictions.jsonl").read_text()
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (whole, resumed)]
    assert metrics[0]["models"] == metrics[1]["models"] and metrics[0]["rows"] == metrics[1]["rows"] == ROWS
    assert not (resumed / PARTIAL).exists()


def test_a_line_torn_by_the_kill_is_answered_again(tmp_path):
    key = {"models": [["base", "m", None]], "rows": ["a", "b"]}
    AnswerLog(tmp_path, key, resume=False).append("base", [("a", "Describe.", "a dog barks")])
    with (tmp_path / PARTIAL).open("a") as handle:
        handle.write('{"model": "base", "id": "b", "prom')  # the write the kill interrupted
    log = AnswerLog(tmp_path, key, resume=True)
    assert log.answer("base", "a", "Describe.") == "a dog barks" and log.answer("base", "b", "Describe.") is None
    log.append("base", [("b", "Describe.", "rain")])
    assert AnswerLog(tmp_path, key, resume=True).answer("base", "b", "Describe.") == "rain"  # on a line of its own
    with pytest.raises(ConfigError, match="row 'a' was answered for the prompt 'Describe.', not 'Caption.'"):
        log.answer("base", "a", "Caption.")
