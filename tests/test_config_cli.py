"""The configuration and the CLI generated from it: parity, composition, retired names, choices from the type, exact
replay, Trainer options that reach the Trainer, experiment tracking, and `import audiotune.cli` without torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from audiotune.cli_args import build_parser, parse
from audiotune.config import (AdapterConfig, BackendConfig, DataCheckConfig, DataConfig, EvalConfig, GenerationSettings,
                              InferConfig, ServeConfig, flat_fields, flat_values)
from audiotune.errors import ConfigError
from audiotune.rl.config import RLConfig
from audiotune.train_config import TrainConfig

NOT_FIELDS = {"help", "config", "nproc", "files", "path", "as_json", "print_vllm_command"}  # the commands' own options


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig, InferConfig, ServeConfig, DataCheckConfig])
def test_every_field_is_an_option_and_every_option_a_field(cls):
    parser = build_parser(cls, "x")
    dests = {action.dest for action in parser._actions} - NOT_FIELDS
    fields = {f.name for f in flat_fields(cls)}
    assert dests == fields
    # and each option's help is the field's, with its default
    helps = {a.dest: a.help for a in parser._actions if a.help and a.help != "==SUPPRESS=="}
    assert all(helps.get(f.name) == f.metadata.get("help") for f in flat_fields(cls)), \
        [f.name for f in flat_fields(cls) if helps.get(f.name) != f.metadata.get("help")]
    assert all(f.metadata.get("help") for f in flat_fields(cls))


def test_train_config_extends_training_arguments_only_and_composes_its_parts():
    from transformers import TrainingArguments

    assert TrainConfig.__bases__ == (TrainingArguments,)
    assert not [c for c in TrainConfig.__mro__ if c.__module__.startswith("audiotune") and c is not TrainConfig]
    cfg, _ = parse(TrainConfig, ["--model", "m", "--dataset", "d", "--output-dir", "runs/x", "--labels", "a,b",
                                 "--per-device-train-batch-size", "2", "--lora-targets", "q_proj,v_proj",
                                 "--eval-split", "none", "--full", "--streaming", "--no-streaming", "--method", "dpo",
                                 "--temperature", "0.5", "--activation-checkpointing"], "audiotune train")
    assert (type(cfg.data), type(cfg.adapter), type(cfg.generation), type(cfg.rl)) == (
        DataConfig, AdapterConfig, GenerationSettings, RLConfig)
    assert cfg.data.labels == ["a", "b"] and not cfg.data.streaming and cfg.eval_split is None
    assert cfg.adapter.lora_targets == ["q_proj", "v_proj"] and cfg.adapter.full
    assert (cfg.rl.method, cfg.generation.temperature) == ("dpo", 0.5)
    assert (cfg.output_dir, cfg.per_device_train_batch_size, cfg.activation_checkpointing) == ("runs/x", 2, True)
    assert cfg == TrainConfig.from_flat(**cfg.user_values())  # keywords route to the same parts
    with pytest.raises(ConfigError, match=r"unknown keywords \['lora_rank'\]; did you mean \[.*'lora_r'\]"):
        TrainConfig.from_flat(lora_rank=8)
    with pytest.raises(ConfigError, match="optim"):
        TrainConfig.from_flat(model="m", dataset="d", optim="no_such_optimizer")


# Each command config's parts (written out: a reference), and values of the user's, by the part that holds them
# (None: the command's own fields). Flags of every part, of every kind: a choice, a boolean, a list, a number.
COMMANDS = {
    EvalConfig: ("audiotune eval", {"data": DataConfig, "generation": GenerationSettings, "engine": BackendConfig}, {
        None: dict(model="m", adapters=["a1", "a2"], split="dev", take=3, asr_normalizer="simple", compare=True),
        "data": dict(dataset="d", task="asr", labels=["x", "y"], streaming=True),
        "generation": dict(max_new_tokens=7, do_sample=True, temperature=0.5),
        "engine": dict(backend="vllm", encoder_frames="valid")}),
    InferConfig: ("audiotune infer", {"generation": GenerationSettings, "engine": BackendConfig}, {
        None: dict(model="m", prompt="What is it?", batch_size=2, on_bad_file="fail"),
        "generation": dict(max_new_tokens=7, num_beams=2),
        "engine": dict(backend="vllm", vllm_python="/opt/vllm/bin/python")}),
    ServeConfig: ("audiotune serve", {"generation": GenerationSettings, "engine": BackendConfig}, {
        None: dict(model="m", adapters=["tuned=runs/a"], port=9001, allow_remote_audio=True,
                   remote_audio_allow_hosts=["h1", "h2"]),
        "generation": dict(max_new_tokens=7, top_p=0.9),
        "engine": dict(backend="vllm", encoder_frames="valid")}),
    DataCheckConfig: ("audiotune data check", {"data": DataConfig}, {
        None: dict(model="m", split="dev", family="qwen2audio"),
        "data": dict(dataset="d", task="asr", long_audio="skip", streaming=True, labels=["x", "y"])}),
}


def _argv(values: dict) -> list[str]:
    """The flags a user types for ``values``: --flag alone for true, --no-flag for false, lists space-separated."""
    argv: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


@pytest.mark.parametrize("cls", list(COMMANDS), ids=lambda cls: cls.__name__)
def test_command_configs_compose_their_parts_and_keep_flags_flat(cls, tmp_path):
    import yaml

    command, parts, by_part = COMMANDS[cls]
    assert cls.__bases__ == (object,)  # no option group inherited: each is a part
    assert {f.name: f.metadata["part"] for f in dataclasses.fields(cls) if "part" in f.metadata} == parts
    values = {name: value for group in by_part.values() for name, value in group.items()}
    cfg, _ = parse(cls, _argv(values), command)
    for part, group in by_part.items():  # each flag reached the part that declares it
        holder = cfg if part is None else getattr(cfg, part)
        assert type(holder) is (cls if part is None else parts[part])
        assert {name: getattr(holder, name) for name in group} == group, part
    assert flat_values(cfg) == {**flat_values(cls()), **values}  # flags → config → the same flat values
    assert cls.from_flat(**values) == cfg  # Python's keywords: the same flat names
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(flat_values(cfg)))  # YAML keys: flat too
    assert "engine:" not in (tmp_path / "run.yaml").read_text()
    assert parse(cls, ["--config", str(tmp_path / "run.yaml")], command)[0] == cfg
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}: unknown keywords \['max_new_token'\]"):
        cls.from_flat(max_new_token=7)


def test_a_part_changed_after_construction_is_checked_by_validate():
    cfg = EvalConfig.from_flat(model="m", dataset="d")
    cfg.engine.backend = "tensorrt"  # the UI sets fields after construction: validate still reads the parts
    with pytest.raises(ConfigError, match=r"^--backend 'tensorrt': choose one of transformers, vllm\.$"):
        cfg.validate()


@pytest.mark.parametrize("old, new", [  # the names audiotune and transformers retired (written out: a reference)
    ("out", "output_dir"), ("batch_size", "per_device_train_batch_size"),
    ("eval_batch_size", "per_device_eval_batch_size"), ("lr_scheduler", "lr_scheduler_type"),
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")])
def test_a_retired_name_is_one_error_naming_the_new_one(tmp_path, cli, old, new):
    flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
    value = "true" if "checkpointing" in old and "kwargs" not in old else "{}" if "kwargs" in old else "2"
    with pytest.raises(ConfigError, match=f"^{flag} was renamed {new_flag}\\.$"):
        parse(TrainConfig, ["--model", "m", flag, value], "audiotune train")
    (tmp_path / "run_config.yaml").write_text(f"model: m\n{old}: {value}\n")  # a file saved before the rename
    with pytest.raises(ConfigError, match=f"run_config.yaml: key '{old}' was renamed '{new}'\\.$"):
        TrainConfig.from_yaml(tmp_path / "run_config.yaml")
    with pytest.raises(ConfigError, match=f"run_config.yaml: key '{old}' was renamed '{new}'"):
        parse(TrainConfig, ["--config", str(tmp_path / "run_config.yaml")], "audiotune train")
    with pytest.raises(ConfigError, match=f"^TrainConfig: keyword '{old}' was renamed '{new}'\\.$"):
        TrainConfig.from_flat(**{old: 2})
    if old == "out":  # the command as a user types it: one line naming the new flag, no traceback
        code, _, err = cli("train", "--model", "m", "--dataset", "d", "--out", "runs/x")
        assert code == 1 and "--out was renamed --output-dir" in err and "Traceback" not in err


def test_a_choice_comes_from_its_literal_type(tmp_path):
    help_text = " ".join(build_parser(TrainConfig, "x").format_help().split())
    for flag, choices in (("--method", "{sft,grpo,dpo}"), ("--task", "{caption,asr,qa,classify,mcq,chat,preference}"),
                          ("--audio-cache", "{memory,disk,off}"), ("--scale-rewards", "{group,batch,none}")):
        assert f"{flag} {choices}" in help_text, flag
    with pytest.raises(SystemExit):  # argparse refuses it, listing the choices
        parse(TrainConfig, ["--method", "ppo"], "x")
    (tmp_path / "run.yaml").write_text("model: m\ndataset: d\nmethod: ppo\n")
    with pytest.raises(ConfigError, match=r"^--method 'ppo': choose one of sft, grpo, dpo\.$"):
        TrainConfig.from_yaml(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match=r"^--long-audio 'crop': choose one of window, truncate, skip, error\.$"):
        TrainConfig.from_flat(long_audio="crop")
    with pytest.raises(ConfigError, match=r"^--audio-cache 'gpu': choose one of memory, disk, off\.$"):
        TrainConfig.from_flat(audio_cache="gpu")
    with pytest.raises(ConfigError, match=r"^--on-bad-file 'ignore': choose one of skip, fail\.$"):
        InferConfig.from_flat(on_bad_file="ignore")


def test_run_config_round_trips_values_in_every_part(tmp_path):
    values = dict(model="m", output_dir="runs/x", train_take=7, audio_cache="disk",  # the run's own
                  dataset="d", task="asr", labels=["a", "b"], long_audio="skip",  # data
                  lora_r=8, lora_targets=["q_proj", "v_proj"], train_projector=True,  # adapter
                  temperature=0.7, max_new_tokens=12,  # generation
                  method="grpo", num_generations=2, rewards=["wer"], scale_rewards="batch",  # rl
                  weight_decay=0.01, report_to=["tensorboard"], lr_scheduler_type="cosine")  # Trainer
    cfg = TrainConfig.from_flat(**values)
    cfg.to_yaml(tmp_path / "run_config.yaml")
    again = TrainConfig.from_yaml(tmp_path / "run_config.yaml")
    assert again.user_values() == cfg.user_values() and again == cfg
    assert {k: again.user_values()[k] for k in values} == values
    assert (again.data.task, again.adapter.lora_r, again.generation.temperature, again.rl.scale_rewards) == (
        "asr", 8, 0.7, "batch")
    saved = (tmp_path / "run_config.yaml").read_text()
    assert "lora_r: 8\n" in saved and "data:" not in saved and "report_to:\n- tensorboard" in saved  # flat, as flags
    assert "do_eval" not in saved and "gradient_checkpointing" not in saved  # transformers' derived values are not


def test_flags_override_the_config_file(tmp_path):
    base, _ = parse(TrainConfig, ["--model", "m", "--dataset", "d", "--max-steps", "7", "--labels", "a",
                                  "--weight-decay", "0.1"], "x")
    base.to_yaml(tmp_path / "run.yaml")
    again, _ = parse(TrainConfig, ["--config", str(tmp_path / "run.yaml"), "--max-steps", "500", "--labels", "b",
                                   "c"], "x")
    assert again.max_steps == 500 and again.data.labels == ["b", "c"] and again.weight_decay == 0.1


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
    return ["--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--train-take", "4",
            "--eval-take", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--logging-steps", "1",
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
                       "--dataloader-num-workers", "2", "--weight-decay", "0.01", "--lr-scheduler-type", "constant",
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
    assert "`--per-device-train-batch-size`" in DOC.read_text() and "`--num-train-epochs`" in DOC.read_text()


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

    cfg = ServeConfig.from_flat(model="m", adapters={"captions": "runs/a"})  # the API's dict form
    assert cfg.adapters == ["captions=runs/a"] and cfg.adapter_paths == {"captions": "runs/a"}
    assert ServeConfig.from_flat(model="m", max_new_tokens=500, max_tokens=100).request_default_tokens == 100
    for given, message in ((["runs/a"], "use NAME=PATH"), (["a=x", "a=y"], "given twice")):
        with pytest.raises(ConfigError, match=message):
            ServeConfig.from_flat(model="m", adapters=given).validate()
    code, _, err = cli("serve", "--model", "nowhere", "--adapter", "runs/a")
    assert code == 1 and "use NAME=PATH" in err and "Traceback" not in err
    code, _, err = cli("serve", "--model", "nowhere", "--num-beams", "4")
    assert code == 1 and "beam search" in err
