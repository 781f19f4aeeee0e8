"""Merge a LoRA adapter into its base: a checkpoint that plain transformers loads, no PEFT needed."""

from __future__ import annotations

from pathlib import Path

import torch

from .models.loading import load_model, load_processor, save_processor


def merge_adapter(model: str, adapter: str, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Load ``model`` + ``adapter``, fold the LoRA weights in, save model and processor to ``out``.

    The processor comes from the adapter folder when it has one (training saves it there), so
    any tokenizer change made for fine-tuning travels with the merged model.
    """
    peft_model, _ = load_model(model, adapter=adapter, dtype=dtype)
    merged = peft_model.merge_and_unload()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    from .checkpoints import processor_folder

    processor_source = processor_folder(model, adapter)
    save_processor(load_processor(processor_source), out_dir)
    return out_dir
