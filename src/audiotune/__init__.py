"""audiotune: fine-tune, evaluate, run and serve audio-text-to-text models.

Importing the package registers the ``audio-text-to-text`` task with transformers' ``pipeline()`` (when
transformers' pipelines load: importing audiotune imports neither torch nor transformers, see task_registration.py).
Every CLI command is also a function here.
"""

from __future__ import annotations

from .errors import (AudioDecodeError, AudioTooLongError, AudiotuneError, CheckpointError, ConfigError,
                     DatasetSchemaError, ModelFamilyError)
from .task_registration import register_pipeline_task as _register_pipeline_task

_register_pipeline_task()

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavy submodules load on first use so that `import audiotune` stays quick.
    lazy = {
        "TrainConfig": ("train_config", "TrainConfig"),
        "DataConfig": ("config", "DataConfig"),
        "AdapterConfig": ("config", "AdapterConfig"),
        "RLConfig": ("rl.config", "RLConfig"),
        "finetune": ("train", "train"),
        "infer_files": ("infer", "infer"),
        "generate_answers": ("generate", "generate"),
        "GenerationSettings": ("config", "GenerationSettings"),
        "examples_from_audio": ("generate", "examples_from_audio"),
        "merge_adapter": ("merge", "merge_adapter"),
        "load_model": ("models.loading", "load_model"),
        "load_processor": ("models.loading", "load_processor"),
        "build_tiny": ("models.tiny", "build_tiny"),
        "write_synthetic_audiocaps": ("data.synthetic", "write_synthetic_audiocaps"),
        "load_audio": ("audio", "load_audio"),
        "run_evaluation": ("evaluate", "run_evaluation"),
        "EvalConfig": ("config", "EvalConfig"),
        "check_dataset": ("data.check", "check_dataset"),
        "run_server": ("serve.server", "serve"),  # not "serve": that is the subpackage's name
        "ServeConfig": ("config", "ServeConfig"),
        "run_demo": ("demo", "run_demo"),
        "make_plan": ("plan", "make_plan"),
        "FAMILIES": ("models.families", "FAMILIES"),
    }
    if name in lazy:
        import importlib

        module, attribute = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'audiotune' has no attribute {name!r}")


__all__ = ["TrainConfig", "AudiotuneError", "AudioDecodeError", "AudioTooLongError", "CheckpointError", "ConfigError",
           "DatasetSchemaError", "ModelFamilyError", "__version__"]
