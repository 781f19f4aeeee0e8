"""Audio-embedding cache: with the encoder and projector frozen, a clip's projected audio embeddings
never change, so compute them once and reuse them in later epochs and in every evaluation.

The cache sits on the family's audio-features method (AF3: ``model.model.get_audio_features``),
keyed per encoder window by a hash of the log-mel features and their mask (so the processor's
settings are part of the key) plus a fingerprint of the encoder and projector weights. Rows already
cached skip the encoder; the others run through it in one call. Values are what the encoder
computed, bit for bit, so logits with and without the cache agree.
It must not be used when anything in the encoder or projector trains: :func:`cache_is_safe` says.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models.family import Family

logger = logging.getLogger(__name__)


def cache_is_safe(model: torch.nn.Module, family: Family) -> bool:
    """True when no parameter of the encoder or projector trains (LoRA included)."""
    return not any(p.requires_grad and (family.is_encoder_module(n) or family.is_projector_module(n))
                   for n, p in model.named_parameters())


def weights_fingerprint(model: torch.nn.Module, family: Family) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, parameter in model.named_parameters():
        if family.is_encoder_module(name) or family.is_projector_module(name):
            digest.update(name.encode())
            digest.update(parameter.detach().float().sum().cpu().numpy().tobytes())
            digest.update(parameter.detach().float().abs().sum().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class AudioEmbeddingCache:
    """In-memory (up to ``max_bytes``) and optionally on-disk store of per-window audio embeddings.

    One cache can serve several models (base, adapters, merged checkpoints): each installation keys
    its entries with its own weights fingerprint, so models with the same encoder share entries.
    """

    directory: Path | None = None
    max_bytes: int = 4 * 1024**3
    memory: dict[str, torch.Tensor] = field(default_factory=dict)
    bytes_used: int = 0
    hits: int = 0
    misses: int = 0

    def key(self, fingerprint: str, features: torch.Tensor, mask: torch.Tensor) -> str:
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=20)
        digest.update(features.detach().contiguous().cpu().numpy().tobytes())
        digest.update(mask.detach().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        value = self.memory.get(key)
        if value is None and self.directory is not None:
            path = self.directory / f"{key}.pt"
            if path.exists():
                value = torch.load(path)
                self._remember(key, value)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        # A value computed under inference_mode (generation) must stay usable in training's autograd.
        with torch.inference_mode(False):
            value = value.detach().cpu().clone()
        self._remember(key, value)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.directory / f".{key}.tmp"
            torch.save(value, temporary)
            temporary.replace(self.directory / f"{key}.pt")

    def _remember(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.bytes_used + size <= self.max_bytes:
            self.memory[key] = value
            self.bytes_used += size


def install_audio_cache(model: torch.nn.Module, family: Family, cache: AudioEmbeddingCache):
    """Wrap the audio-features method of ``model`` (plain or PEFT-wrapped); return a function that undoes it.

    A family whose audio-features method has another signature (``family.audio_cache`` false) is left as it is:
    the cache is an optimisation, never a requirement.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    if not family.audio_cache:
        logger.info("audio-embedding cache not available for the %s family; running without it.", family.name)
        return lambda: None

    inner = _inner_model(model, family)
    original = getattr(inner, family.audio_features_method)
    fingerprint = weights_fingerprint(model, family)
    tower = getattr(inner, family.audio_tower_attribute)

    def cached(input_features: torch.Tensor, input_features_mask: torch.Tensor, **kwargs):
        keys = [cache.key(fingerprint, f, m) for f, m in zip(input_features, input_features_mask)]
        _, lengths = tower._get_feat_extract_output_lengths(input_features_mask.sum(-1).to(torch.long))
        lengths = lengths.tolist()
        found = [cache.get(k) for k in keys]
        # A clip repeated in one batch (GRPO's group of completions, DPO's chosen/rejected pair) is encoded once.
        first: dict[str, int] = {}
        for i, value in enumerate(found):
            if value is None:
                first.setdefault(keys[i], i)
        missing = list(first.values())
        cache.hits += len(keys) - len(missing)
        cache.misses += len(missing)
        if missing:
            index = torch.tensor(missing, device=input_features.device)
            out = original(input_features.index_select(0, index), input_features_mask.index_select(0, index),
                           **kwargs)
            computed = {}
            for i, piece in zip(missing, torch.split(out.pooler_output, [lengths[i] for i in missing])):
                computed[keys[i]] = piece
                cache.put(keys[i], piece)
            found = [computed[k] if value is None else value for k, value in zip(keys, found)]
        device = input_features.device
        pooled = torch.cat([value.to(device) for value in found])
        return BaseModelOutputWithPooling(pooler_output=pooled)

    setattr(inner, family.audio_features_method, cached)

    def uninstall() -> None:
        delattr(inner, family.audio_features_method)  # back to the class method

    return uninstall


def _inner_model(model: torch.nn.Module, family: Family) -> torch.nn.Module:
    """The module that owns the audio-features method (AF3: ``AudioFlamingo3Model``)."""
    for module in model.modules():
        if hasattr(module, family.audio_tower_attribute) and hasattr(module, family.audio_features_method) \
                and hasattr(module, "language_model"):
            return module
    raise AttributeError(f"no module with {family.audio_features_method} and {family.audio_tower_attribute}")
