"""`audiotune merge` of a thinker adapter on a complete Qwen Omni checkpoint writes the complete checkpoint back.

Each family's tiny complete checkpoint (thinker + talker + vocoder, ``tiny.build_tiny_full``) gets a LoRA on its
thinker exactly as training wraps it (``prepare_for_training``), with random non-zero B matrices, and is merged. The
references are independent of the merge code: transformers' own loader (missing/unexpected keys), the base weights
plus ``scale * B @ A`` computed here from the adapter's files, the base's safetensors read tensor by tensor, and the
real complete class's ``generate`` returning audio.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # a tiny complete checkpoint, an adapter and a merge per family: ~40 s each on CPU

COMPLETE = {"qwen25omni": "Qwen2_5OmniForConditionalGeneration",
            "qwen3omni": "Qwen3OmniMoeForConditionalGeneration"}
# The weight prefixes of the parts the merge must copy untouched (modeling_qwen2_5_omni.py / modeling_qwen3_omni_moe.py
# <Full>ForConditionalGeneration.enable_talker: self.talker, self.token2wav / self.code2wav).
OTHER_PARTS = {"qwen25omni": ("talker.", "token2wav."), "qwen3omni": ("talker.", "code2wav.")}


# Checks whose rule does not depend on the family run on one (the module's Qwen2.5-Omni fixtures, reused).
ONE_FAMILY = pytest.mark.parametrize("family_name", ["qwen25omni"], indirect=True)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint folder stores, by its on-disk name (all shards)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            found.update({key: handle.get_tensor(key) for key in handle.keys()})
    return found


@pytest.fixture(scope="module", params=sorted(COMPLETE))
def family_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def complete(family_name, tmp_path_factory) -> Path:
    from audiotune.models.tiny import build_tiny_full

    return build_tiny_full(family_name, tmp_path_factory.mktemp(f"complete-{family_name}"), seed=0, preset="micro")


@pytest.fixture(scope="module")
def adapter(complete, tmp_path_factory) -> Path:
    """A LoRA on the thinker as `audiotune train` wraps it, B drawn at random (PEFT starts it at zero, a no-op)."""
    from audiotune.models.loading import AdaptationPlan, load_base_model, prepare_for_training

    model, family = load_base_model(str(complete))
    peft = prepare_for_training(model, family, AdaptationPlan(lora_r=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def merged(complete, adapter, tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """The merge's folder and the records it logged."""
    from audiotune.merge import merge_adapter

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("audiotune.merge")
    logger.addHandler(handler)
    try:
        out = merge_adapter(str(complete), str(adapter), tmp_path_factory.mktemp("merged") / "out")
    finally:
        logger.removeHandler(handler)
    return out, records


def complete_class(family_name: str):
    import transformers

    return getattr(transformers, COMPLETE[family_name])


def test_tiny_complete_checkpoint_names_the_real_architecture(family_name, complete):
    """The tiny complete checkpoint's metadata is the real one's (published/complete/<hub id>.json cites it)."""
    config = json.loads((complete / "config.json").read_text())
    expected = {"qwen25omni": ("qwen2_5_omni", ["Qwen2_5OmniModel"], "qwen2_5_omni_thinker"),
                "qwen3omni": ("qwen3_omni_moe", ["Qwen3OmniMoeForConditionalGeneration"], "qwen3_omni_moe_thinker")}
    assert (config["model_type"], config["architectures"], config["thinker_config"]["model_type"]) == \
        expected[family_name]
    assert config["enable_audio_output"] is True
    # Ids the complete model reads from the thinker's vocabulary name the same tokens as the real ones do (remapped
    # to the tiny vocabulary, as the thinker's own ids are).
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(complete)).convert_tokens_to_ids
    if family_name == "qwen25omni":
        talker = config["talker_config"]
        assert (talker["audio_token_index"], talker["audio_start_token_id"], talker["audio_end_token_id"]) == \
            (ids("<|AUDIO|>"), ids("<|audio_bos|>"), ids("<|audio_eos|>"))
        assert talker["audio_token_index"] == config["thinker_config"]["audio_token_index"]
        assert talker["tts_codec_end_token_id"] == 8294  # the talker's own codec vocabulary, as published
    else:
        assert (config["im_start_token_id"], config["user_token_id"], config["assistant_token_id"]) == \
            (ids("<|im_start|>"), ids("user"), ids("assistant"))
        assert config["talker_config"]["audio_token_id"] == config["thinker_config"]["audio_token_id"] == \
            ids("<|audio_pad|>")
        assert config["talker_config"]["speaker_id"] == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    stored = tensors(complete)
    assert {key.split(".")[0] for key in stored} == {"thinker", *(p.rstrip(".") for p in OTHER_PARTS[family_name])}



def test_tiny_complete_checkpoint_has_every_weight_drawn_and_the_same_for_the_same_seed(family_name, complete,
                                                                                         tmp_path):
    """transformers 5.24 leaves Qwen3-Omni's talker experts as ``torch.empty`` left them (tiny.construct draws
    them): memory that held a NaN made the bit-for-bit talker test fail at random."""
    from audiotune.models.tiny import build_tiny_full

    stored, again = tensors(complete), tensors(build_tiny_full(family_name, tmp_path, seed=0, preset="micro"))
    floats = {key: value for key, value in stored.items() if value.is_floating_point()}
    assert [key for key, value in floats.items() if not value.isfinite().all()] == []
    # every linear weight is drawn from a normal by the model's init (none starts at zero)
    assert [key for key, value in floats.items() if key.endswith("proj.weight") and not value.any()] == []
    assert stored.keys() == again.keys() and all(torch.equal(stored[key], again[key]) for key in stored)

def test_merged_loads_with_no_missing_or_unexpected_keys(family_name, complete, merged):
    import transformers

    out, _ = merged
    # The complete classes' own from_pretrained loads speakers and drops the loading info: the base loader reports it.
    _, info = transformers.PreTrainedModel.from_pretrained.__func__(
        complete_class(family_name), str(out), output_loading_info=True)
    assert {key: value for key, value in info.items() if value} == {}
    assert json.loads((out / "config.json").read_text()) == json.loads((complete / "config.json").read_text())
    assert (out / "spk_dict.pt").exists() == (complete / "spk_dict.pt").exists()


def test_merged_thinker_is_base_plus_lora(family_name, complete, adapter, merged):
    """Every thinker weight: the base's, plus ``alpha / r * B @ A`` where the adapter has a LoRA (computed here)."""
    from safetensors.torch import load_file

    cls = complete_class(family_name)
    base = cls.from_pretrained(str(complete), dtype=torch.float32).thinker.state_dict()
    result = cls.from_pretrained(str(merged[0]), dtype=torch.float32).thinker.state_dict()
    lora_config = json.loads((adapter / "adapter_config.json").read_text())
    scale = lora_config["lora_alpha"] / lora_config["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    expected = dict(base)
    modules = {key.removeprefix("base_model.model.").rsplit(".lora_A.", 1)[0] for key in lora if ".lora_A." in key}
    assert modules, "the adapter carries no LoRA"
    for module in modules:
        a = lora[f"base_model.model.{module}.lora_A.weight"]
        b = lora[f"base_model.model.{module}.lora_B.weight"]
        expected[f"{module}.weight"] = base[f"{module}.weight"] + scale * (b @ a)
    assert result.keys() == expected.keys()
    changed = 0
    for name, tensor in expected.items():
        if name.removesuffix(".weight") in modules:
            torch.testing.assert_close(result[name], tensor, rtol=0, atol=1e-6, msg=name)
            changed += not torch.equal(result[name], base[name])
        else:
            assert torch.equal(result[name], tensor), name
    assert changed == len(modules)


def test_talker_and_vocoder_are_the_base_bit_for_bit(family_name, complete, merged):
    base, result = tensors(complete), tensors(merged[0])
    assert base.keys() == result.keys()
    others = [key for key in base if key.startswith(OTHER_PARTS[family_name])]
    assert {key.split(".")[0] for key in others} == {p.rstrip(".") for p in OTHER_PARTS[family_name]}
    for key in others:
        assert result[key].dtype == base[key].dtype and torch.equal(result[key], base[key]), key


def test_merged_checkpoint_still_speaks(family_name, merged):
    """The real complete class loads the merge and ``generate`` returns text ids and a waveform."""
    from transformers import AutoProcessor

    out = merged[0]
    model = complete_class(family_name).from_pretrained(str(out), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(out))
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Describe the audio."}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_tensors="pt", return_dict=True)
    # Qwen2.5-Omni's generate speaks unless told generation_mode="text" (it has no return_audio argument).
    audio = {"return_audio": True} if family_name == "qwen3omni" else {"generation_mode": "audio"}
    torch.manual_seed(0)
    text, waveform = model.generate(**inputs, thinker_max_new_tokens=4, talker_max_new_tokens=6, **audio)
    assert text.shape[0] == 1 and text.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(waveform, torch.Tensor) and waveform.numel() > 0 and torch.isfinite(waveform).all()


def test_merge_warns_that_the_talker_input_changed(merged):
    _, records = merged
    assert [r.levelno for r in records if "talker" in r.getMessage() and "thinker" in r.getMessage()] == \
        [logging.WARNING]


@ONE_FAMILY
def test_base_in_another_layout_is_refused(family_name, complete, adapter, tmp_path):
    """A base whose thinker is stored under names transformers would not write back is an error, not a half-renamed
    checkpoint."""
    from safetensors.torch import save_file

    from audiotune.errors import CheckpointError
    from audiotune.merge import merge_adapter

    base = tmp_path / "base"
    shutil.copytree(complete, base)
    stored = tensors(base)
    stored["thinker.lm_head.kernel"] = stored.pop("thinker.lm_head.weight")
    save_file(stored, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"only in the base: \['lm_head.kernel'\]"):
        merge_adapter(str(base), str(adapter), tmp_path / "out")


@ONE_FAMILY
def test_thinker_only_base_merges_to_the_thinker(family_name, adapter, tmp_path):
    """A thinker-only base (the tiny checkpoint the rest of the suite uses) still merges to a thinker alone."""
    from audiotune.merge import merge_adapter
    from audiotune.models.tiny import cached_tiny

    thinker = tmp_path / "thinker"
    shutil.copytree(cached_tiny(family_name), thinker)
    out = merge_adapter(str(thinker), str(adapter), tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni_thinker"
    assert not [key for key in tensors(out) if key.startswith(("thinker.", "talker.", "token2wav."))]
    assert not (out / "spk_dict.pt").exists()


@ONE_FAMILY
def test_cli_merge_writes_the_complete_checkpoint(family_name, complete, adapter, tmp_path, cli):
    code, out, err = cli("merge", "--model", complete, "--adapter", adapter, "--out", tmp_path / "m")
    assert code == 0, err
    assert "merged checkpoint written to" in out
    assert (tmp_path / "m" / "spk_dict.pt").exists()
    assert any(key.startswith("token2wav.") for key in tensors(tmp_path / "m"))
