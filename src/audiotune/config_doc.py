"""``docs/configuration.md``, generated from the config dataclasses (``make config-doc``; a test keeps it current).

The document is a view of the fields, never a second copy to maintain: each option's flag, YAML key, old names,
default and help come from ``dataclasses.fields`` and ``metadata``, so it cannot drift from ``--help``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import (ALIASES, AdapterConfig, DataCheckConfig, DataConfig, EvalConfig, GenerationSettings, InferConfig,
                     ServeConfig, plain)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

INTRO = """# Configuration

<!-- Generated from the dataclasses in src/audiotune/config.py and train_config.py by `make config-doc`;
     do not edit by hand (tests/test_config_cli.py checks it is current). -->

Every option is a field of a documented dataclass, so the same name works as a flag (`--lora-r 8`, also
`--lora_r 8`), as a key of a YAML file given with `--config run.yaml` (read first; flags override it), and as a
keyword of the Python API (`TrainConfig(lora_r=8)`). `audiotune train --help` prints the same list.

- `DataConfig`, `AdapterConfig` and `GenerationSettings` are shared: train, eval, infer, `data check`, `plan` and
  the training callback read the same fields with the same defaults.
- `TrainConfig` composes them with the RL settings and **extends `transformers.TrainingArguments`**: every Trainer
  option (epochs, optimizer, scheduler, `report_to`, `run_name`, `fsdp`, `deepspeed`, `torch_compile`, ...) is an
  option here with transformers' own default and help. Where audiotune's default differs (the reference guide's
  values), the table of audiotune's Trainer defaults says so.
- A run writes `run_config.yaml`: the user-level configuration (audiotune's fields and the Trainer options that differ
  from transformers' defaults). `audiotune train --config runs/x/run_config.yaml` repeats the run exactly; values
  derived at run time (fewer data-loader workers for a stream with few shards, evaluation off without eval rows,
  CPU when there is no GPU) are not written back.
- Booleans: `--full` or `--full true`, `--no-full`. Lists: `--labels a,b` or `--labels a b`. `--max-steps` (500, the
  guide's) wins over `--num-train-epochs`: pass `--max-steps -1 --num-train-epochs 2` to train by epochs.

Old names keep working as flags, YAML keys and keywords: {aliases}.
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


def _table(fields: list[dataclasses.Field]) -> str:
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for f in fields:
        names = [f"`--{f.name.replace('_', '-')}`"]
        aliases = f.metadata.get("aliases", [])
        names += [f"`{a}`" for a in ([aliases] if isinstance(aliases, str) else aliases) if "_" not in a]
        rows.append(f"| {' '.join(names)} | {_show(_default(f))} | {_cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows)


def _own(cls: type, *bases: type) -> list[dataclasses.Field]:
    inherited = {f.name for base in bases for f in dataclasses.fields(base)}
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in inherited]


def render_markdown() -> str:
    """The whole document."""
    from transformers import TrainingArguments

    from .train_config import RLConfig, TrainConfig

    trainer = {f.name for f in dataclasses.fields(TrainingArguments)}
    train_own = [f for f in dataclasses.fields(TrainConfig) if f.name in TrainConfig.__annotations__]
    sections = [
        ("Data (`DataConfig`: train, eval, `data check`)", [f for f in dataclasses.fields(DataConfig)]),
        ("Adapter (`AdapterConfig`: train, plan)", list(dataclasses.fields(AdapterConfig))),
        ("Generation (`GenerationSettings`: infer, eval, serve's request defaults, the training callback)",
         list(dataclasses.fields(GenerationSettings))),
        ("Training run (`TrainConfig`'s own fields)", [f for f in train_own if f.name not in trainer]),
        ("Trainer options with audiotune's defaults", [f for f in train_own if f.name in trainer]),
        ("Reinforcement learning (`--method grpo|dpo`, docs/rl.md)", list(dataclasses.fields(RLConfig))),
        ("Every other `TrainingArguments` option (transformers' defaults and help)",
         [f for f in dataclasses.fields(TrainConfig)
          if f.init and f.name in trainer and f.name not in TrainConfig.__annotations__]),
        ("`audiotune eval` (`EvalConfig`: also the data and generation options above)",
         _own(EvalConfig, DataConfig, GenerationSettings)),
        ("`audiotune infer FILE...` (`InferConfig`: also the generation options above)",
         _own(InferConfig, GenerationSettings)),
        ("`audiotune serve` (`ServeConfig`: also the generation options above, what a request that sets none gets)",
         _own(ServeConfig, GenerationSettings)),
        ("`audiotune data check DATASET` (`DataCheckConfig`: also the data options above)",
         _own(DataCheckConfig, DataConfig)),
    ]
    aliases = ", ".join(f"`{old}` → `{new}`" for old, new in ALIASES.items())
    parts = [INTRO.format(aliases=aliases)]
    for title, fields in sections:
        parts.append(f"## {title}\n\n{_table(fields)}\n")
    return "\n".join(parts)


def write(path: str | Path = DOC) -> Path:
    Path(path).write_text(render_markdown())
    return Path(path)


if __name__ == "__main__":
    write()
