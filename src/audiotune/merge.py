"""Merge a LoRA adapter into its base: a checkpoint that plain transformers loads, no PEFT needed.

A family whose trained model is one part of the published checkpoint (Qwen2.5-Omni and Qwen3-Omni: training tunes
the thinker; the talker and the vocoder that speak its answers stay out of it) gets that complete checkpoint back when
the base is one: the merged part under the complete model's weight names, every other weight copied from the base's
files tensor by tensor, and the base's config, speakers and other files, so the complete class loads it and still
speaks. A base that is the part alone (a thinker-only folder) merges to the part alone, as before.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .models.family import Family
from .models.loading import load_model, load_processor, save_processor, trained_part_config

logger = logging.getLogger(__name__)

TALKER_WARNING = (
    "%s: merged the tuned %s into the complete %s checkpoint; its other parts are the base's, untouched. The talker "
    "speaks from the thinker's hidden states and token embeddings, which tuning changed: listen to the spoken "
    "answers before you ship them (docs/training.md, 'Merging').")

# Files of a checkpoint folder that hold its weights: the merge writes its own.
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pth", ".ckpt")


def merge_adapter(model: str, adapter: str, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Load ``model`` + ``adapter``, fold the LoRA weights in, save model and processor to ``out``.

    The processor comes from the adapter folder when it has one (training saves it there), so
    any tokenizer change made for fine-tuning travels with the merged model. When ``model`` is a complete checkpoint
    of which the family trains one part (:func:`complete_base`), ``out`` is that complete checkpoint with the part
    merged (:func:`write_complete`); ``dtype`` is the merged part's, the untouched parts keep the base's.
    """
    peft_model, family = load_model(model, adapter=adapter, dtype=dtype)
    merged = peft_model.merge_and_unload()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = complete_base(model, family)
    if base is None:
        merged.save_pretrained(str(out_dir))
    else:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".part-") as part_dir:
            merged.save_pretrained(part_dir)
            del peft_model, merged  # the part's tensors are read back from its files: one copy in memory, not two
            write_complete(Path(part_dir), family, base, out_dir)
        logger.warning(TALKER_WARNING, out_dir, family.complete_model_part, family.complete_model_class)
    from .checkpoints import processor_folder

    processor_source = processor_folder(model, adapter)
    save_processor(load_processor(processor_source), out_dir)
    return out_dir


def complete_base(model: str | Path, family: Family) -> Path | None:
    """The local folder of ``model`` when it is a complete checkpoint of which ``family`` trains one part (its config
    is the complete class's: Qwen2_5OmniConfig, not the thinker's), else None."""
    if family.complete_model_class is None:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model))
    if trained_part_config(family, config) is config:
        return None
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(model)))


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (its index's shards, or its single ``model.safetensors``)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    return [single] if single.exists() else []


def write_complete(part_dir: Path, family: Family, base: Path, out_dir: Path) -> None:
    """Write the complete checkpoint: the tuned part (as ``save_pretrained`` wrote it in ``part_dir``) under the
    base's ``<part>.`` names, every other tensor of the base's safetensors copied as stored (dtype and bytes), the
    base's non-weight files (config.json, generation_config.json, Qwen2.5-Omni's spk_dict.pt, ...) copied, shards
    and index written afresh (peak memory: the part plus the other parts, no model).

    Why copy rather than load the complete model and save it: the untouched parts stay bit for bit the base's, in
    the base's dtype and names, and nothing but the part is ever instantiated. The part's names are what
    transformers writes for it (``save_pretrained`` reverts its load-time renames), checked against the base's: a
    base stored in another layout is refused rather than written half-renamed.
    """
    from huggingface_hub import save_torch_state_dict
    from safetensors import safe_open

    prefix = f"{family.complete_model_part}."
    base_files = weight_files(base)
    if not base_files:
        raise CheckpointError(f"{base}: no model.safetensors (or sharded index) to copy the "
                              f"{family.complete_model_class}'s other parts from. Convert the checkpoint to "
                              "safetensors and merge again.")
    part_files = weight_files(part_dir)
    part_keys = {key.removeprefix(prefix) for key in _keys(part_files)}
    base_part = {key.removeprefix(prefix) for key in _keys(base_files) if key.startswith(prefix)}
    if base_part != part_keys:
        only_base, only_merged = sorted(base_part - part_keys), sorted(part_keys - base_part)
        raise CheckpointError(
            f"{base}: the merged {family.complete_model_part}'s weight names differ from the base's "
            f"(only in the base: {only_base[:3]}{' ...' if len(only_base) > 3 else ''}; only in the merge: "
            f"{only_merged[:3]}{' ...' if len(only_merged) > 3 else ''}), so they cannot go back under its "
            f"'{prefix}' names. Merge onto a {family.complete_model_part}-only base instead (save the base's "
            f"{family.complete_model_part} with transformers first) and report the checkpoint.")
    state: dict[str, torch.Tensor] = {}
    for path in part_files:
        with safe_open(str(path), "pt") as handle:
            state.update({f"{prefix}{key.removeprefix(prefix)}": handle.get_tensor(key) for key in handle.keys()})
    for path in base_files:
        with safe_open(str(path), "pt") as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys() if not key.startswith(prefix)})
    for path in sorted(base.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(path, out_dir / path.name)
    for stale in out_dir.iterdir():  # a previous merge's shards would shadow the new index
        if stale.is_file() and stale.name.startswith("model") and stale.name.endswith(WEIGHT_SUFFIXES):
            stale.unlink()
    save_torch_state_dict(state, out_dir, metadata={"format": "pt"})


def _keys(files: list[Path]) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for path in files:
        with safe_open(str(path), "pt") as handle:
            keys.extend(handle.keys())
    return keys
