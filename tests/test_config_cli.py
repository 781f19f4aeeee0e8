"""The configuration and the CLI generated from it: parity, old names, exact replay, Trainer options that reach the
Trainer, experiment tracking, and `import audiotune.cli` without torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from audiotune.cli_args import build_parser, parse
from audiotune.config import DataCheckConfig, EvalConfig, InferConfig, ServeConfig
from audiotune.errors import ConfigError
from audiotune.train_config import TrainConfig

NOT_FIELDS = {"help", "config", "nproc", "files", "path", "as_json", "print_vllm_command"}  # the commands' own options


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig, InferConfig, ServeConfig, DataCheckConfig])
def test_every_field_is_an_option_and_every_option_a_field(cls):
    parser = build_parser(cls, "x")
    dests = {action.dest for action in parser._actions} - NOT_FIELDS
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    assert dests == fields
    # and each option's help is the field's, with its default
    helps = {a.dest: a.help for a in parser._actions if a.help and a.help != "==SUPPRESS=="}
    assert all(helps.get(f.name) == f.metadata.get("help") for f in dataclasses.fields(cls) if f.init), \
        [f.name for f in dataclasses.fields(cls) if f.init and helps.get(f.name) != f.metadata.get("help")]
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls) if f.init)


def test_old_flags_and_yaml_keys_still_work(tmp_path):
    cfg, _ = parse(TrainConfig, ["--model", "m", "--dataset", "d", "--out", "runs/x", "--batch-size", "2",
                                 "--eval-batch-size", "3", "--lr-scheduler", "cosine", "--labels", "a,b",
                                 "--lora-targets", "q_proj,v_proj", "--eval-split", "none", "--full",
                                 "--streaming", "--no-streaming", "--gradient-checkpointing"], "audiotune train")
    assert (cfg.output_dir, cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size) == ("runs/x", 2, 3)
    assert cfg.lr_scheduler_type.value == "cosine" and cfg.labels == ["a", "b"] and cfg.eval_split is None
    assert cfg.lora_targets == ["q_proj", "v_proj"] and cfg.full and not cfg.streaming
    assert cfg.activation_checkpointing  # transformers' new name for gradient checkpointing
    assert (cfg.out, cfg.batch_size, cfg.lr_scheduler) == ("runs/x", 2, "cosine")  # the old names still read
    # a run_config.yaml written before this configuration existed
    (tmp_path / "old.yaml").write_text("model: m\ndataset: d\nout: runs/y\nbatch_size: 8\neval_batch_size: 2\n"
                                       "lr_scheduler: constant\ngradient_checkpointing: false\nlabels: null\n")
    old = TrainConfig.from_yaml(tmp_path / "old.yaml")
    assert (old.output_dir, old.per_device_train_batch_size, old.lr_scheduler_type.value) == ("runs/y", 8, "constant")
    with pytest.raises(ConfigError, match="both 'batch_size' and its new name"):
        TrainConfig(batch_size=2, per_device_train_batch_size=3)
    with pytest.raises(ConfigError, match="optim"):
        TrainConfig(model="m", dataset="d", optim="no_such_optimizer")


def test_flags_override_the_config_file(tmp_path):
    base, _ = parse(TrainConfig, ["--model", "m", "--dataset", "d", "--max-steps", "7", "--labels", "a",
                                  "--weight-decay", "0.1"], "x")
    base.to_yaml(tmp_path / "run.yaml")
    again, _ = parse(TrainConfig, ["--config", str(tmp_path / "run.yaml"), "--max-steps", "500", "--labels", "b",
                                   "c"], "x")
    assert again.max_steps == 500 and again.labels == ["b", "c"] and again.weight_decay == 0.1


def test_import_cli_does_not_import_torch():
    code = ("import sys, audiotune, audiotune.cli; heavy = [m for m in ('torch', 'transformers', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_pipeline_task_is_registered_when_transformers_loads():
    code = ("import audiotune, sys; assert 'transformers' not in sys.modules; "
            "from transformers.pipelines import PIPELINE_REGISTRY; "
            "print('audio-text-to-text' in PIPELINE_REGISTRY.get_supported_tasks())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


class _Seen:
    """A Trainer callback that keeps what the Trainer was given (no mock: the real objects it trains with)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Seen(TrainerCallback):
            def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
                self.args, self.optimizer, self.lr_scheduler = args, optimizer, lr_scheduler

            def on_epoch_end(self, args, state, control, **kwargs):
                self.epochs = getattr(self, "epochs", 0) + 1

        return Seen()


def _micro_argv(model, data, out, *extra):
    return ["--model", str(model), "--dataset", str(data), "--out", str(out), "--train-take", "4", "--eval-take", "2",
            "--batch-size", "2", "--gradient-accumulation-steps", "1", "--logging-steps", "1",
            "--eval-generate-take", "0", "--save-steps", "100", "--eval-steps", "100", *extra]


def test_epochs_optimizer_scheduler_and_tensorboard_reach_the_trainer(micro_af3, synth_data, tmp_path):
    from audiotune.train import train

    cfg, _ = parse(TrainConfig, _micro_argv(micro_af3, synth_data, tmp_path / "run", "--max-steps", "-1",
                                            "--num-train-epochs", "2", "--optim", "adafactor",
                                            "--lr-scheduler-type", "cosine", "--report-to", "tensorboard",
                                            "--run-name", "epochs-test"), "audiotune train")
    seen = _Seen()
    result = train(cfg, callbacks=[seen])
    assert result.steps == 4 and seen.epochs == 2  # 4 rows / batch 2 = 2 steps an epoch
    from transformers.optimization import Adafactor

    assert isinstance(getattr(seen.optimizer, "optimizer", seen.optimizer), Adafactor)
    assert "cosine" in seen.lr_scheduler.lr_lambdas[0].func.__name__
    assert seen.args.run_name == "epochs-test" and seen.args.report_to == ["tensorboard"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, list((tmp_path / "run").rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = [e.value for e in accumulator.Scalars("train/loss")]
    assert len(losses) == 4 and losses == pytest.approx([h["loss"] for h in result.log_history if "loss" in h])


def test_trackio_logs_the_loss_locally(micro_af3, synth_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = f"""
import json, sys
from audiotune.cli_args import parse
from audiotune.train import train
from audiotune.train_config import TrainConfig
cfg, _ = parse(TrainConfig, {_micro_argv(micro_af3, synth_data, tmp_path / "run", "--max-steps", "3",
                                         "--report-to", "trackio", "--run-name", "tracked", "--project",
                                         "audiotune-test")!r}, "x")
result = train(cfg)
print("LOSSES", json.dumps([h["loss"] for h in result.log_history if "loss" in h]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("LOSSES "))[7:])
    import sqlite3

    stores = list((tmp_path / "trackio").rglob("*.db"))
    assert stores, list((tmp_path / "trackio").rglob("*"))
    logged = []
    with sqlite3.connect(stores[0]) as db:
        for (metrics,) in db.execute("SELECT metrics FROM metrics"):
            value = json.loads(metrics).get("train/loss")
            if value is not None:
                logged.append(value)
    assert len(losses) == 3 and logged == pytest.approx(losses)


def test_replaying_run_config_gives_the_same_configuration(micro_af3, synth_data, tmp_path, caplog):
    from audiotune.train import train

    argv = _micro_argv(micro_af3, synth_data, tmp_path / "run", "--max-steps", "2", "--streaming",
                       "--dataloader-num-workers", "2", "--weight-decay", "0.01", "--lr-scheduler", "constant",
                       "--lora-targets", "q_proj,v_proj", "--max-grad-norm", "0.5", "--seed", "3")
    cfg, _ = parse(TrainConfig, argv, "audiotune train")
    with caplog.at_level("WARNING"):
        train(cfg)
    assert "instead of 2" in caplog.text  # the stream has 1 shard: the run used 1 worker ...
    saved = tmp_path / "run" / "run_config.yaml"
    replay, _ = parse(TrainConfig, ["--config", str(saved)], "audiotune train")
    assert replay.dataloader_num_workers == 2  # ... and the derived value was not written back
    assert replay.user_values() == cfg.user_values()
    assert replay.to_dict() == cfg.to_dict()


def test_configuration_doc_is_generated_from_the_dataclasses():
    from audiotune.config_doc import DOC, render_markdown

    assert DOC.read_text() == render_markdown(), "docs/configuration.md is stale: run `make config-doc`"
    assert "`--batch-size`" in DOC.read_text() and "`--num-train-epochs`" in DOC.read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU-only refusal")
def test_fsdp_and_deepspeed_on_cpu_say_they_need_gpus(micro_af3, synth_data, tmp_path):
    # accelerate 1.15 builds its FSDP plugin only for GPU-type runs: on 2 CPU processes `--fsdp` trained plain DDP
    # (the DDP reducer's warnings in the log). Saying so beats a run that is not what was asked for.
    import importlib.util

    from audiotune.train import train

    cfg, _ = parse(TrainConfig, _micro_argv(micro_af3, synth_data, tmp_path / "run", "--fsdp", "full_shard auto_wrap"),
                   "audiotune train")
    with pytest.raises(ConfigError, match="--fsdp shards the model over GPUs.*--nproc"):
        train(cfg)
    assert not (tmp_path / "run" / "run_config.yaml").exists()
    if importlib.util.find_spec("deepspeed") is None:  # passed through to transformers, which needs the package
        with pytest.raises(ConfigError, match="deepspeed"):
            parse(TrainConfig, ["--deepspeed", "configs/ds_zero2.json"], "audiotune train")


def test_serve_adapters_are_name_path_items_checked_before_the_model_loads(cli):
    from audiotune.config import ServeConfig

    cfg = ServeConfig(model="m", adapters={"captions": "runs/a"})  # the API's dict form
    assert cfg.adapters == ["captions=runs/a"] and cfg.adapter_paths == {"captions": "runs/a"}
    assert ServeConfig(model="m", max_new_tokens=500, max_tokens=100).request_default_tokens == 100
    for given, message in ((["runs/a"], "use NAME=PATH"), (["a=x", "a=y"], "given twice")):
        with pytest.raises(ConfigError, match=message):
            ServeConfig(model="m", adapters=given).validate()
    code, _, err = cli("serve", "--model", "nowhere", "--adapter", "runs/a")
    assert code == 1 and "use NAME=PATH" in err and "Traceback" not in err
    code, _, err = cli("serve", "--model", "nowhere", "--num-beams", "4")
    assert code == 1 and "beam search" in err
