"""The LoRA real checkpoints ship for their audio path (#19 1b): Granite Speech 3.3's beside its weights, Phi-4-
multimodal's ``speech-lora/``. The tiny checkpoints carry one in the real layout; audiotune folds it into the base
weights on load, so training, merge, generation and serving see the model the way the real one runs on audio.

Expected values come from the public record, never from audiotune: transformers'
``convert_phi4_multimodal_weights_to_hf.py`` (``extract_adapters_data``), the Phi-4-multimodal model doc
(``load_adapter(..., adapter_kwargs={"subfolder": "speech-lora"})``), and transformers' own loading of an adapter
found beside Granite's weights (``from_pretrained``; ``has_lora_adapter`` in its config).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from audiotune.merge import merge_adapter
from audiotune.models.loading import (AdaptationPlan, load_base_model, load_model, load_processor,
                                      prepare_for_training, to_model_inputs)
from audiotune.models.tiny import build_tiny

PHI4_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"  # the converter's regex


@pytest.fixture(scope="module", params=["granite_speech", "phi4mm"])
def checkpoint(request, tmp_path_factory):
    return build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "tiny", seed=0, preset="micro")


def _inputs(checkpoint):
    processor = load_processor(checkpoint)
    rate = 16000
    clip = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": clip},
                                                 {"type": "text", "text": "Describe the audio."}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def _logits(model, inputs):
    with torch.no_grad():
        return model(**to_model_inputs(inputs, model)).logits


def _without_adapters(checkpoint, out):
    shutil.copytree(checkpoint, out)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / name).unlink(missing_ok=True)
    for sub in ("speech-lora", "vision-lora"):
        shutil.rmtree(out / sub, ignore_errors=True)
    return out


def test_the_tiny_checkpoint_ships_the_adapter_in_the_real_layout(checkpoint):
    if checkpoint.parent.name.startswith("granite"):
        assert json.loads((checkpoint / "config.json").read_text())["has_lora_adapter"] is True
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and set(config["target_modules"]) == {"q_proj", "v_proj"}  # IBM README
        # The real checkpoint is sharded and indexed: a loader reading the index never takes the adapter as weights.
        index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {"model.safetensors"}
        return
    for sub, dropout in (("speech-lora", 0.01), ("vision-lora", 0.0)):  # extract_adapters_data's two LoraConfigs
        config = json.loads((checkpoint / sub / "adapter_config.json").read_text())
        assert config["target_modules"] == PHI4_TARGETS and config["lora_dropout"] == dropout
        assert config["lora_alpha"] == 2 * config["r"] and config["task_type"] == "CAUSAL_LM"  # 640/320, 512/256
        with safe_open(str(checkpoint / sub / "adapter_model.safetensors"), "pt") as handle:
            keys = list(handle.keys())
        assert keys and all(k.startswith("model.layers.") for k in keys)  # the converter's names, no PEFT prefix


def test_loading_folds_the_adapter_as_the_real_model_applies_it_to_audio(checkpoint, tmp_path):
    inputs = _inputs(checkpoint)
    ours, family = load_model(checkpoint)
    model_class = getattr(transformers, family.model_class)
    upstream = model_class.from_pretrained(str(checkpoint)).eval()  # Granite: transformers loads the adapter itself
    if family.modality_adapter:  # Phi-4's model doc: load_adapter(path, adapter_name="speech", subfolder)
        upstream.load_adapter(str(checkpoint), adapter_name="speech", adapter_kwargs={"subfolder": "speech-lora"})
    assert upstream._hf_peft_config_loaded
    bare = model_class.from_pretrained(str(_without_adapters(checkpoint, tmp_path / "bare"))).eval()
    folded = _logits(ours, inputs)
    torch.testing.assert_close(folded, _logits(upstream, inputs), atol=1e-4, rtol=1e-4)
    assert (folded - _logits(bare, inputs)).abs().max() > 0.02  # the adapter is not a no-op
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in ours.modules())  # folded: no live adapter left
    assert not getattr(ours.config, "has_lora_adapter", False)


def test_a_merged_checkpoint_holds_both_loras_and_loads_without_peft(checkpoint, tmp_path):
    """Ours is trained over the folded audio LoRA; the merged folder holds both, carries no adapter files, and plain
    transformers loads it to the logits of base + audio LoRA + ours."""
    inputs = _inputs(checkpoint)
    base, family = load_base_model(checkpoint)
    peft = prepare_for_training(base, family, AdaptationPlan(lora_r=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft.save_pretrained(tmp_path / "ours")
    adapted, _ = load_model(checkpoint, adapter=tmp_path / "ours")
    merged_dir = merge_adapter(str(checkpoint), str(tmp_path / "ours"), tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists() and not (merged_dir / "speech-lora").exists()
    assert not json.loads((merged_dir / "config.json").read_text()).get("has_lora_adapter", False)
    plain = getattr(transformers, family.model_class).from_pretrained(str(merged_dir)).eval()
    torch.testing.assert_close(_logits(plain, inputs), _logits(adapted, inputs), atol=1e-4, rtol=1e-4)


def test_vllm_applies_the_checkpoints_audio_lora_per_request_and_refuses_to_stack_ours(checkpoint, tmp_path):
    """vLLM's docs/features/lora.md ("Default LoRA Models For Multimodal Models"): Granite Speech's adapter goes in
    --default-mm-loras for audio requests; one LoRA per request leaves no room for ours: merge first."""
    from audiotune.errors import ConfigError
    from audiotune.serve.server import ServeConfig
    from audiotune.serve.vllm_server import vllm_command

    if not checkpoint.parent.name.startswith("granite"):
        with pytest.raises(ConfigError, match="vLLM does not serve the phi4mm family"):  # vLLM dropped Phi-4-MM
            vllm_command(ServeConfig.from_flat(model=str(checkpoint)))
        return
    command = vllm_command(ServeConfig.from_flat(model=str(checkpoint)), on_cpu=False)
    assert json.loads(command[command.index("--default-mm-loras") + 1]) == {"audio": str(checkpoint)}
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "8"
    with pytest.raises(ConfigError, match="ships its own audio LoRA.*Merge first"):
        vllm_command(ServeConfig.from_flat(model=str(checkpoint), adapters={"ours": str(tmp_path)}), on_cpu=False)
