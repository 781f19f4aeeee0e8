"""``docs/configuration.md``, generated from the config dataclasses (``make config-doc``; a test keeps it current).

The document is a view of the fields, never a second copy to maintain: each option's flag, YAML key, default, help
and choices (a ``Literal`` type) come from ``dataclasses.fields``, ``metadata`` and the type, so it cannot drift from
``--help``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import (AdapterConfig, BackendConfig, DataCheckConfig, DataConfig, EvalConfig, GenerationSettings,
                     InferConfig, ServeConfig, flat_fields, flat_hints, literal_choices, plain)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

INTRO = """# Configuration

<!-- Generated from the dataclasses in src/audiotune/config.py and train_config.py by `make config-doc`;
     do not edit by hand (tests/test_config_cli.py checks it is current). -->

Every option is a field of a documented dataclass, so the same name works as a flag (`--lora-r 8`, also
`--lora_r 8`), as a key of a YAML file given with `--config run.yaml` (read first; flags override it), and as a
keyword of the Python API (`TrainConfig.from_flat(lora_r=8)`). `audiotune train --help` prints the same list.

- `DataConfig`, `AdapterConfig`, `GenerationSettings` and `BackendConfig` are shared: train, eval, infer, serve,
  `data check`, `plan` and the training callback read the same fields with the same defaults. Each command's config
  composes the parts it needs (`EvalConfig`: `.data`, `.generation`, `.engine`; `InferConfig` and `ServeConfig`:
  `.generation`, `.engine`; `DataCheckConfig`: `.data`) and takes flat names in Python too:
  `EvalConfig.from_flat(dataset=..., max_new_tokens=8, backend="vllm")`.
- `TrainConfig` **extends `transformers.TrainingArguments`** only: every Trainer option (epochs, optimizer,
  scheduler, `report_to`, `run_name`, `fsdp`, `deepspeed`, `torch_compile`, ...) is an option here with transformers'
  own default and help. Where audiotune's default differs (the reference guide's values), the table of audiotune's
  Trainer defaults says so. The data, adapter, generation and RL settings are composed as parts (`cfg.data.dataset`,
  `cfg.adapter.lora_r`, `cfg.generation.temperature`, `cfg.rl.method`); their options stay flat (`--dataset`,
  `--lora-r`, ...), and `TrainConfig.from_flat(dataset=..., lora_r=8)` takes the same flat names in Python.
- An option with a fixed set of values lists them ("one of ..."): `--help` shows them as `{{a,b}}`, and any other
  value, on the command line, in YAML or as a keyword, is an error that lists them.
- A run writes `run_config.yaml`: the user-level configuration (audiotune's fields and the Trainer options that differ
  from transformers' defaults). `audiotune train --config runs/x/run_config.yaml` repeats the run exactly; values
  derived at run time (fewer data-loader workers for a stream with few shards, evaluation off without eval rows,
  CPU when there is no GPU) are not written back.
- Booleans: `--full` or `--full true`, `--no-full`. Lists: `--labels a,b` or `--labels a b`. `--max-steps` (500, the
  guide's) wins over `--num-train-epochs`: pass `--max-steps -1 --num-train-epochs 2` to train by epochs.

One spelling per option: a retired name (flag, YAML key or keyword) is an error naming the current one: {retired}.
"""


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return plain(value)


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _show(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "" or value == [] or value == {}:
        return f"`{value!r}`"
    return f"`{_cell(value)}`"


def _table(cls: type, fields: list[dataclasses.Field]) -> str:
    hints = flat_hints(cls)
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for f in fields:
        names = [f"`--{f.name.replace('_', '-')}`"]
        aliases = f.metadata.get("aliases", [])
        names += [f"`{a}`" for a in ([aliases] if isinstance(aliases, str) else aliases) if "_" not in a]
        choices = literal_choices(hints.get(f.name))
        text = (f"One of {', '.join(f'`{c}`' for c in choices)}. " if choices else "") + f.metadata.get("help", "")
        rows.append(f"| {' '.join(names)} | {_show(_default(f))} | {_cell(text)} |")
    return "\n".join(rows)


def _own(cls: type) -> list[dataclasses.Field]:
    """A command config's own options: its parts have their sections."""
    return [f for f in dataclasses.fields(cls) if f.init and "part" not in f.metadata]


def render_markdown() -> str:
    """The whole document."""
    from transformers import TrainingArguments

    from .rl.config import RLConfig
    from .train_config import TrainConfig

    trainer = {f.name for f in dataclasses.fields(TrainingArguments)}
    declared = TrainConfig.__dict__["__annotations__"]
    train_own = [f for f in flat_fields(TrainConfig) if f.name in declared]
    sections = [
        ("Data (`DataConfig`, `TrainConfig.data`: train, eval, `data check`)", DataConfig,
         list(dataclasses.fields(DataConfig))),
        ("Adapter (`AdapterConfig`, `TrainConfig.adapter`: train, plan)", AdapterConfig,
         list(dataclasses.fields(AdapterConfig))),
        ("Generation (`GenerationSettings`, `TrainConfig.generation`: infer, eval, serve's request defaults, the "
         "training callback)", GenerationSettings, list(dataclasses.fields(GenerationSettings))),
        ("Engine (`BackendConfig`, the `engine` part of `EvalConfig`, `InferConfig` and `ServeConfig`)", BackendConfig,
         list(dataclasses.fields(BackendConfig))),
        ("Training run (`TrainConfig`'s own fields)", TrainConfig, [f for f in train_own if f.name not in trainer]),
        ("Trainer options with audiotune's defaults", TrainConfig, [f for f in train_own if f.name in trainer]),
        ("Reinforcement learning (`RLConfig`, `TrainConfig.rl`: `--method grpo|dpo`, docs/rl.md)", RLConfig,
         list(dataclasses.fields(RLConfig))),
        ("Every other `TrainingArguments` option (transformers' defaults and help)", TrainConfig,
         [f for f in flat_fields(TrainConfig) if f.name in trainer and f.name not in declared]),
        ("`audiotune eval` (`EvalConfig`: also the data, generation and engine options above)", EvalConfig,
         _own(EvalConfig)),
        ("`audiotune infer FILE...` (`InferConfig`: also the generation and engine options above)", InferConfig,
         _own(InferConfig)),
        ("`audiotune serve` (`ServeConfig`: also the engine options, and the generation options a request that sets "
         "none gets)", ServeConfig, _own(ServeConfig)),
        ("`audiotune data check DATASET` (`DataCheckConfig`: also the data options above)", DataCheckConfig,
         _own(DataCheckConfig)),
    ]
    retired = ", ".join(f"`--{old.replace('_', '-')}` → `--{new.replace('_', '-')}`"
                        for old, new in TrainConfig.RETIRED.items())
    parts = [INTRO.format(retired=retired)]
    for title, cls, fields in sections:
        parts.append(f"## {title}\n\n{_table(cls, fields)}\n")
    return "\n".join(parts)


def write(path: str | Path = DOC) -> Path:
    Path(path).write_text(render_markdown())
    return Path(path)


if __name__ == "__main__":
    write()
