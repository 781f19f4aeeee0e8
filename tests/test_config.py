"""Run configs: YAML round trip, clear errors, and the guide's skip/take split semantics."""

from __future__ import annotations

import pytest

from audiotune.train_config import TrainConfig
from audiotune.errors import ConfigError
from audiotune.train import build_datasets
from tests.conftest import offline_entry


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = TrainConfig.from_flat(model="m", dataset="d", lora_r=8, lora_targets=["q_proj", "v_proj"], eval_split=None)
    cfg.to_yaml(tmp_path / "run.yaml")
    again = TrainConfig.from_yaml(tmp_path / "run.yaml", learning_rate=5e-4, max_steps=None)
    assert again.adapter.lora_r == 8 and again.adapter.lora_targets == ["q_proj", "v_proj"] and again.eval_split is None
    assert again.learning_rate == 5e-4 and again.max_steps == cfg.max_steps


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: m\nlearning_rte: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rte"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="--model"):
        TrainConfig.from_flat(dataset="d").validate()
    with pytest.raises(ConfigError, match="--on-bad-sample"):
        TrainConfig.from_flat(model="m", dataset="d", on_bad_sample="ignore").validate()
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_flat(model="m", dataset="d", per_device_train_batch_size=0).validate()


@pytest.mark.parametrize("streaming", [False, True])
def test_eval_rows_carved_from_train_like_the_guide(synth_data, tmp_path, streaming):
    cfg = TrainConfig.from_flat(model="m", dataset=str(synth_data), output_dir=str(tmp_path), eval_split=None,
                                train_take=10, eval_take=4, streaming=streaming)
    train_ds, eval_ds, _ = build_datasets(cfg, offline_entry("af3"), tmp_path)
    train_ids = [e.id for e in (train_ds if streaming else (train_ds[i] for i in range(len(train_ds))))]
    eval_ids = [e.id for e in (eval_ds if streaming else (eval_ds[i] for i in range(len(eval_ds))))]
    assert len(train_ids) == 10 and len(eval_ids) == 4 and not set(train_ids) & set(eval_ids)
    from datasets import load_dataset

    all_ids = load_dataset(str(synth_data), split="train")["youtube_id"]
    assert train_ids == all_ids[:10] and eval_ids == all_ids[10:14]


def test_public_api_names_resolve():
    import audiotune
    import audiotune.serve.app  # noqa: F401  (subpackages imported first must not shadow the API names)

    for name in ("finetune", "generate_answers", "GenerationSettings", "examples_from_audio", "merge_adapter",
                 "load_model", "load_processor", "build_tiny", "write_synthetic_audiocaps", "load_audio",
                 "run_evaluation", "EvalConfig", "check_dataset", "run_server", "ServeConfig", "run_demo",
                 "make_plan"):
        assert callable(getattr(audiotune, name)), name
    assert "af3" in audiotune.FAMILIES
    with pytest.raises(AttributeError):
        audiotune.no_such_thing  # noqa: B018
