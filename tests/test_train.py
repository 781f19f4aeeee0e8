"""Training: the loss falls, adapters round-trip, merging is exact, bad rows never kill a run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, Dataset, Features, Value

from audiotune.train_config import TrainConfig
from audiotune.data.collator import ConversationCollator
from audiotune.conversation import Example, prompt_messages
from audiotune.errors import AudioDecodeError, DatasetSchemaError
from audiotune.merge import merge_adapter
from audiotune.models.loading import load_model
from audiotune.train import latest_checkpoint, train
from tests.conftest import tone


def _config(model, data, out, **kw):
    base = dict(model=str(model), dataset=str(data), output_dir=str(out), per_device_train_batch_size=4,
                gradient_accumulation_steps=1, learning_rate=3e-3, max_steps=8, logging_steps=2, eval_steps=4,
                save_steps=4, eval_take=4, seed=0)
    base.update(kw)
    return TrainConfig.from_flat(**base)


def _batch(processor, family):
    examples = [Example("x", prompt_messages(tone(1.5, 330), "Describe the audio."), ["A low tone."]),
                Example("y", prompt_messages(tone(2.0, 990), "Describe the audio."), ["Two short beeps."])]
    return ConversationCollator(processor, family, training=True)(examples)


@pytest.mark.slow
def test_loss_falls_over_a_few_dozen_steps(trained_adapter):
    history = json.loads((trained_adapter / "train_metrics.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 5
    assert np.mean(losses[-2:]) < 0.92 * np.mean(losses[:2])
    assert losses[-1] < losses[0] - 0.5
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "README.md",
                 "run_config.yaml", "tokenizer.json"):
        assert (trained_adapter / name).exists(), name
    card = (trained_adapter / "README.md").read_text()
    assert "eval loss" in card and "language model" in card


@pytest.mark.slow
def test_adapter_reload_and_merge_give_the_same_logits(trained_adapter, tiny_af3, family, tmp_path):
    from audiotune.models.loading import load_processor

    batch = _batch(load_processor(tiny_af3), family)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    peft_model, _ = load_model(tiny_af3, adapter=trained_adapter)
    base, _ = load_model(tiny_af3)
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        plain = base(**inputs).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapter changes something

    reloaded, _ = load_model(tiny_af3, adapter=trained_adapter)
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, adapted, atol=1e-6)

    merged_dir = merge_adapter(str(tiny_af3), str(trained_adapter), tmp_path / "merged")
    from transformers import AudioFlamingo3ForConditionalGeneration

    merged = AudioFlamingo3ForConditionalGeneration.from_pretrained(merged_dir).eval()  # plain transformers
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, adapted, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def test_wrong_column_fails_before_the_model_loads(micro_af3, synth_data, tmp_path, monkeypatch):
    import audiotune.train as train_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(train_module, "load_base_model", must_not_load)
    with pytest.raises(DatasetSchemaError, match=r"no text column 'transcript'.*--text-column"):
        train(_config(micro_af3, synth_data, tmp_path, text_column="transcript"))
    with pytest.raises(DatasetSchemaError, match="no audio column 'sound'"):
        train(_config(micro_af3, synth_data, tmp_path, audio_column="sound"))


def _dataset_with_bad_rows(tmp_path):
    rate = 16000
    good = []
    for i in range(10):
        buffer = io.BytesIO()
        sf.write(buffer, tone(1.0, 300 + 50 * i), rate, format="WAV")
        good.append({"bytes": buffer.getvalue(), "path": f"good{i}.wav"})
    rows = {"id": [f"good{i}" for i in range(10)] + ["corrupt", "empty-caption", "empty-audio"],
            "caption": ["A tone."] * 10 + ["A tone.", "   ", "A tone."],
            "audio": good + [{"bytes": b"not audio at all" * 20, "path": "corrupt.wav"},
                             good[0], {"bytes": b"", "path": "empty.wav"}]}
    features = Features({"id": Value("string"), "caption": Value("string"), "audio": Audio()})
    path = tmp_path / "bad.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_bad_rows_are_skipped_and_listed(micro_af3, tmp_path, streaming, monkeypatch):
    data = _dataset_with_bad_rows(tmp_path)
    out = tmp_path / f"run-{streaming}"
    consumed: list[str] = []  # every example the trainer's batches held, in order
    collate = ConversationCollator.__call__
    monkeypatch.setattr(ConversationCollator, "__call__",
                        lambda self, examples: consumed.extend(e.id for e in examples) or collate(self, examples))
    # one epoch: 13 rows (10 good) map-style; a stream needs a step count (3 steps of 4 read past its 10 rows)
    steps = {"max_steps": 3} if streaming else {"max_steps": -1, "num_train_epochs": 1}
    result = train(_config(micro_af3, data, out, eval_split=None, eval_take=None, save_steps=4, streaming=streaming,
                           id_column="id", **steps))
    good = [f"good{i}" for i in range(10)]
    if streaming:  # the first epoch of the stream is every good row once, and nothing else
        assert result.steps == 3 and sorted(consumed[:10]) == good
    else:  # each bad row's place is taken by the next good one: every good row is trained on, no bad one
        assert result.steps == 4 and len(consumed) == 13 and sorted(set(consumed)) == good
    skipped = {entry["id"]: entry for entry in result.skipped}
    assert set(skipped) == {"corrupt", "empty-caption", "empty-audio"}
    assert "cannot decode" in skipped["corrupt"]["message"]
    listed = [json.loads(line)["id"] for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert set(listed) == set(skipped)
    assert (out / "adapter_model.safetensors").exists()


def test_on_bad_sample_fail_raises_the_rows_error(micro_af3, tmp_path):
    data = _dataset_with_bad_rows(tmp_path)
    with pytest.raises((AudioDecodeError, DatasetSchemaError), match="^(corrupt|empty-caption|empty-audio)"):
        train(_config(micro_af3, data, tmp_path / "fail", eval_split=None, eval_take=None, max_steps=4,
                      on_bad_sample="fail", id_column="id", per_device_train_batch_size=13))


def test_empty_dataset_is_caught(micro_af3, tmp_path):
    path = tmp_path / "empty.parquet"
    Dataset.from_dict({"caption": [], "audio": []},
                      features=Features({"caption": Value("string"), "audio": Audio()})).to_parquet(str(path))
    with pytest.raises(DatasetSchemaError, match="empty"):
        train(_config(micro_af3, path, tmp_path / "e", eval_split=None))


def test_latest_checkpoint_skips_truncated_unmarked_and_altered_ones(tmp_path, caplog):
    import logging

    from audiotune.checkpoints import MARKER, checkpoint_is_complete, write_marker

    for step in (2, 4, 6, 8):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"w" * 64)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (folder / "optimizer.pt").write_bytes(b"o" * 4096)
        (folder / "scheduler.pt").write_bytes(b"s" * 64)
        (folder / "rng_state.pth").write_bytes(b"r" * 64)
        write_marker(folder)
    (tmp_path / "checkpoint-10").mkdir()  # every file but no marker: cut off before the marker, or not ours
    for name in ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (tmp_path / "checkpoint-10" / name).write_bytes((tmp_path / "checkpoint-8" / name).read_bytes())
    assert all(checkpoint_is_complete(tmp_path / f"checkpoint-{s}") for s in (2, 4, 6, 8))
    assert latest_checkpoint(tmp_path).name == "checkpoint-8"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"--resume: skipping {tmp_path / 'checkpoint-10'}: it has no {MARKER} (cut off mid-save, or not written "
        "by audiotune); an older checkpoint is used."]
    caplog.clear()

    with (tmp_path / "checkpoint-8" / "optimizer.pt").open("r+b") as handle:
        handle.truncate(1000)  # half-written
    (tmp_path / "checkpoint-6" / MARKER).unlink()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 5}))  # same size
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    reasons = {r.args[0].name: r.args[1] for r in caplog.records if r.name == "audiotune.checkpoints"}
    assert reasons == {
        "checkpoint-10": f"it has no {MARKER} (cut off mid-save, or not written by audiotune)",
        "checkpoint-8": "optimizer.pt is 1000 bytes, 4096 were written (truncated or changed)",
        "checkpoint-6": f"it has no {MARKER} (cut off mid-save, or not written by audiotune)",
        "checkpoint-4": "trainer_state.json does not match the checksum recorded when it was written"}
    (tmp_path / "checkpoint-2" / "optimizer.pt").unlink()
    assert latest_checkpoint(tmp_path) is None

    # Marked whole but without the schedule's position or a random state: not resumable either.
    from audiotune.checkpoints import checkpoint_problem

    for missing, reason in (("scheduler.pt", "it has no scheduler.pt"), ("rng_state.pth", "it has no rng_state.pth")):
        folder = tmp_path / f"without-{missing}"
        folder.mkdir()
        for name in ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt",
                     "rng_state.pth"):
            if name != missing:
                (folder / name).write_bytes(b"x" * 64)
        write_marker(folder)
        assert checkpoint_problem(folder) == reason
    (tmp_path / "two-ranks").mkdir()
    for name in ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt",
                 "rng_state_0.pth", "rng_state_1.pth"):
        (tmp_path / "two-ranks" / name).write_bytes(b"x" * 64)
    write_marker(tmp_path / "two-ranks")
    assert checkpoint_problem(tmp_path / "two-ranks") is None
