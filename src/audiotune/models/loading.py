"""Load a base model (+ adapter) and its processor; wrap it for LoRA or full fine-tuning.

The family (from ``config.model_type``) decides the model class and which modules are the
language model, the audio encoder and the projector; nothing here is architecture-specific.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ModelFamilyError
from .facts import bind
from .families import family_for_config
from .family import FACTS, PROCESSOR_FACTS, Family
from .tiny import cached_tiny

logger = logging.getLogger(__name__)


def resolve_family(model_id_or_path: str) -> Family:
    """The family of a checkpoint (local folder or Hub id), bound to it: every fact its registry entry does not
    override is inferred from the checkpoint's processor, chat template and module tree (``facts.py``)."""
    from transformers import AutoConfig

    path = Path(model_id_or_path)
    stamp = (path / "config.json").stat().st_mtime_ns if (path / "config.json").exists() else 0
    try:
        config = AutoConfig.from_pretrained(model_id_or_path)
    except OSError as error:
        raise CheckpointError(
            f"Cannot read a model config from {model_id_or_path!r}: {error}. Pass a local checkpoint folder "
            "(e.g. one made by `audiotune tiny`) or a Hub id reachable from this machine.") from error
    except ValueError as error:
        raise ModelFamilyError(f"{model_id_or_path}: {error}") from error
    key = (str(model_id_or_path), stamp)  # config.json's mtime: a rebuilt folder resolves afresh
    if key not in _BOUND:
        entry = family_for_config(config)
        config = trained_part_config(entry, config)
        try:
            processor = _auto_processor(model_id_or_path, entry)
        except OSError:  # a config-only folder: processor facts then come from the registry entry's tiny checkpoint
            processor = None
        bound = bind(entry, config=config, processor=processor)
        _BOUND[key] = bound if processor is not None else offline_facts(bound)
    return _BOUND[key]


_BOUND: dict[tuple[str, int], Family] = {}


def trained_part_config(family: Family, config):
    """The config of the model ``family`` trains: a complete checkpoint's part (Qwen Omni's ``thinker_config``
    inside the full model's config), else ``config`` itself. The one rule for "this checkpoint is complete":
    ``config`` is complete exactly when this returns something else (merge writes such a base back whole)."""
    if family.complete_model_class is None:
        return config
    part = getattr(config, f"{family.complete_model_part}_config", None)
    return config if part is None else part


def offline_facts(family: Family) -> Family:
    """``family`` with the facts no processor answered read from its registry entry's tiny checkpoint: every unset
    fact of an unbound entry (``FAMILIES["af3"]``), the processor facts of one bound without a processor.

    Why: a data check by family name, the UI's data tab, ``audiotune plan`` and a checkpoint folder without
    processor files have no processor to read facts from, and the tiny checkpoint carries the family's published
    processor and chat template, so its facts are the real ones. Building it takes seconds, once per user cache
    (``tiny.cached_tiny``), which is why callers ask for it here and no attribute read does it behind their back.
    A family that is not a registry entry has no tiny checkpoint: ModelFamilyError.
    """
    if family.processor is not None:  # bound to its own processor: every fact is answered
        return family
    missing = [f for f in (PROCESSOR_FACTS if family.bound else FACTS) if getattr(family, f) is None]
    if not missing:
        return family
    tiny = resolve_family(str(cached_tiny(family.name)))
    found = {f: getattr(tiny, f) for f in missing if getattr(tiny, f) is not None}
    return family.variant(**found, inferred=(*family.inferred, *found))


def _family_of_folder(path: Path) -> Family | None:
    """The registry entry of a checkpoint (local or Hub id), or of an adapter folder's base model; None when it
    cannot be told (then the processor loads with transformers' defaults, and any real problem surfaces there)."""
    adapter_config = path / "adapter_config.json"
    if not (path / "config.json").exists() and adapter_config.exists():
        import json

        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        path = Path(base) if base else path
    from transformers import AutoConfig

    try:
        return family_for_config(AutoConfig.from_pretrained(str(path)))
    except (OSError, ValueError, ModelFamilyError):
        return None


def _auto_processor(model_id_or_path: str | Path, family: Family | None):
    from transformers import AutoProcessor

    kwargs: dict[str, Any] = {}
    if family is not None:
        missing = family.missing_packages()
        if missing:
            raise ModelFamilyError(
                f"{model_id_or_path}: the {family.name} family needs {', '.join(missing)}, which is not "
                f"installed. Install it (pip install {' '.join(missing)}) and retry"
                + (f". Known issue: {family.known_issue}" if family.known_issue else "."))
        kwargs.update(family.processor_kwargs)
    try:
        processor = AutoProcessor.from_pretrained(str(model_id_or_path), **kwargs)
    except ImportError as error:  # a processor part needs a package this machine lacks (e.g. torchvision)
        raise ModelFamilyError(
            f"{model_id_or_path}: its processor cannot be built here: "
            f"{next((line.strip() for line in str(error).splitlines() if line.strip()), repr(error))} "
            "Install the missing package (see docs/models.md, known issues) and retry.") from error
    # Some processors (Phi-4-multimodal in transformers 5.24) drop their chat template on load; the tokenizer
    # carries the same one.
    tokenizer = getattr(processor, "tokenizer", None)
    if getattr(processor, "chat_template", None) is None and getattr(tokenizer, "chat_template", None):
        processor.chat_template = tokenizer.chat_template
    # A tokenizer saved after padding a batch (its tokenizer.json keeps the padding state) loads with
    # ``max_length=None`` among its init kwargs; the processor hands that to the feature extractor as an explicit
    # None, which Gemma 3n's (it truncates by default) refuses.
    for key in ("max_length", "pad_to_multiple_of"):
        if key in getattr(tokenizer, "init_kwargs", {}) and tokenizer.init_kwargs[key] is None:
            del tokenizer.init_kwargs[key]
    return processor


def load_processor(model_id_or_path: str | Path):
    return _auto_processor(model_id_or_path, _family_of_folder(Path(model_id_or_path)))


def save_processor(processor, out_dir: str | Path) -> None:
    """``processor.save_pretrained`` that also loads back from a folder without the model's config.json (an
    adapter folder): a tokenizer that writes no tokenizer_config.json (Voxtral's mistral-common backend) gets
    one naming its class, or transformers would load a different tokenizer class from the same files."""
    import json

    processor.save_pretrained(str(out_dir))
    tokenizer = getattr(processor, "tokenizer", None)
    marker = Path(out_dir) / "tokenizer_config.json"
    if tokenizer is not None and not marker.exists():
        marker.write_text(json.dumps({"tokenizer_class": type(tokenizer).__name__}) + "\n")


def load_base_model(model_id_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | None = None,
                    quantize_lm_4bit: bool = False, family: Family | None = None):
    """The base model in ``dtype`` on ``device`` (``None``: CPU, or as ``device_map='auto'`` places it on GPUs).

    ``quantize_lm_4bit`` (QLoRA): the language model in bitsandbytes NF4 with bf16 compute; the audio encoder,
    projector and LM head stay in ``dtype`` (quantising the encoder hurts audio quality and saves little).
    ``family``: the checkpoint's bound family when the caller has resolved it already (else resolved here).
    """
    import transformers

    family = family or resolve_family(str(model_id_or_path))
    model_class = getattr(transformers, family.model_class)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device == "auto" or quantize_lm_4bit:
        kwargs["device_map"] = "auto"
    if quantize_lm_4bit:
        skip = [p.split(".")[-1] for p in (*family.encoder_prefixes, *family.projector_prefixes)] + ["lm_head"]
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    if family.modality_adapter is not None:
        # transformers loads an adapter found beside the weights (Granite's) as a live PEFT adapter whose loading
        # replaces the base's weight-name mapping, so a later save_pretrained writes garbled names. Pointing its
        # lookup at a subfolder that holds none turns that off; fold_modality_adapter loads and folds it instead.
        kwargs["adapter_kwargs"] = {"subfolder": _NO_ADAPTER_HERE}
    model = model_class.from_pretrained(str(model_id_or_path), **kwargs)
    fold_modality_adapter(model, family, model_id_or_path)
    if quantize_lm_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if device not in (None, "auto"):
        model = model.to(device)
    return model, family


_NO_ADAPTER_HERE = "audiotune-folds-the-modality-adapter"


def modality_adapter_path(model_id_or_path: str | Path, family: Family) -> str | None:
    """The local folder (the Hub cache's, for a Hub id) of the LoRA the checkpoint ships for its audio path, or None
    when the family has none or this checkpoint lacks it (Granite Speech 4.1 plus, a merged checkpoint)."""
    if family.modality_adapter is None:
        return None
    from transformers.utils.peft_utils import find_adapter_config_file

    subfolder = family.modality_adapter
    found = find_adapter_config_file(str(model_id_or_path), subfolder=subfolder)
    return None if found is None else str(Path(found).parent)


def fold_modality_adapter(model: torch.nn.Module, family: Family, model_id_or_path: str | Path) -> bool:
    """Merge the checkpoint's own audio LoRA into the base weights; True when there was one.

    Why fold rather than stack: the real models apply this adapter whenever audio is present (Granite's ``generate``
    enables it only with ``input_features``; Phi-4's docs ``set_adapter("speech")`` before audio). Folded, the
    checkpoint behaves as that audio path everywhere: our LoRA trains on top of it, merges into it, and serves as
    one model, with no nested adapters and no toggling. The price: a text-only turn also runs with the audio LoRA
    (upstream runs it without), and Phi-4's vision-lora is not applied. docs/models.md says so.
    """
    if modality_adapter_path(model_id_or_path, family) is None:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    # load_adapter reads either key layout (PEFT's base_model.model. prefix or the Phi-4 converter's bare names) and
    # replaces the weight-name mapping save_pretrained reverts with its own: the base's is put back below.
    base_names = getattr(model, "_weight_conversions", None)
    sub = family.modality_adapter
    model.load_adapter(str(model_id_or_path), adapter_name="audio", adapter_kwargs={"subfolder": sub} if sub else {})
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    model._hf_peft_config_loaded = False
    model._weight_conversions = base_names
    if hasattr(model, "peft_config"):
        del model.peft_config
    if getattr(model.config, "has_lora_adapter", False):
        model.config.has_lora_adapter = False  # the weights now hold it: a saved merge must not load it again
    logger.info("%s: folded the checkpoint's audio LoRA into the base weights", model_id_or_path)
    return True


def load_model(model_id_or_path: str | Path, adapter: str | Path | None = None,
               dtype: torch.dtype = torch.float32, device: str | None = None, encoder_frames: str = "window",
               family: Family | None = None):
    """Base model, with a PEFT adapter on top when ``adapter`` is given; in eval mode.

    ``encoder_frames``: ``window`` (default) runs the audio tower over whole windows, ``valid`` over each batch's
    valid frames where the family allows it (``encoder_frames.py``).
    """
    from .encoder_frames import apply_encoder_frames

    model, family = load_base_model(model_id_or_path, dtype=dtype, device=device, family=family)
    apply_encoder_frames(model, family, encoder_frames)
    if adapter is not None:
        from peft import PeftModel

        check_adapter_folder(adapter)
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, family


def check_adapter_folder(adapter: str | Path) -> None:
    """A local adapter path must be an adapter folder (a Hub id is left to PEFT)."""
    adapter_path = Path(adapter)
    if adapter_path.exists() and not (adapter_path / "adapter_config.json").exists():
        raise CheckpointError(f"{adapter}: no adapter_config.json here. Pass the folder `audiotune train` "
                              "wrote (its --output-dir), or a checkpoint-N folder inside it.")


@dataclass(frozen=True)
class AdaptationPlan:
    """What will be trained: LoRA on given targets (or full LM), and whether the projector trains."""

    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str | None = None  # None → the family's language-model regex
    train_projector: bool = False
    train_audio_encoder: str = "none"  # none | lora (its linears) | full (the tower, saved with the adapter)


def projector_module_names(model: torch.nn.Module, family: Family) -> list[str]:
    """Top-level projector module names, relative to ``model`` (for PEFT's ``modules_to_save``)."""
    return [name for name, _ in model.named_modules() if family.is_projector_module(name)
            and not family.is_projector_module(name.rsplit(".", 1)[0])]


def encoder_module_names(model: torch.nn.Module, family: Family) -> list[str]:
    """Top-level audio-encoder module names (the tower that ``--train-audio-encoder full`` saves whole)."""
    return [name for name, _ in model.named_modules() if family.is_encoder_module(name)
            and not family.is_encoder_module(name.rsplit(".", 1)[0])]


def encoder_linear_names(model: torch.nn.Module, family: Family) -> list[str]:
    """The audio encoder's linear layers (its attention and MLP projections): ``--train-audio-encoder lora``'s
    targets, read from the module tree so every family's tower is covered without a per-family list."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and family.is_encoder_module(name)]


def prepare_for_training(model: torch.nn.Module, family: Family, plan: AdaptationPlan) -> torch.nn.Module:
    """Freeze what stays frozen and wrap with LoRA (default) or unfreeze the LM (``full``).

    The audio encoder is frozen unless ``train_audio_encoder`` says otherwise (or the user's own ``lora_targets``
    reach into it): with LoRA on the language model only, no gradient has to flow back through the encoder, and the
    backward pass stops at the projector's output. ``lora`` adds LoRA to the encoder's linears; ``full`` trains the
    whole tower, which the adapter then carries (PEFT's ``modules_to_save``), so it reloads and merges like the rest.
    """
    if plan.train_audio_encoder != "none" and not encoder_linear_names(model, family):
        raise ModelFamilyError(
            f"--train-audio-encoder {plan.train_audio_encoder}: the {family.name} family has no audio encoder with "
            "layers to train (none at all, or a discrete codec whose tokens pass no gradient back, as Apertus' "
            "WavTokenizer); train the language model (the default) instead.")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if plan.full:
        for name, parameter in model.named_parameters():
            in_encoder = family.is_encoder_module(name)
            in_projector = family.is_projector_module(name)
            parameter.requires_grad_(plan.train_audio_encoder == "full" if in_encoder
                                     else not in_projector or plan.train_projector)
        return model

    from peft import LoraConfig, get_peft_model

    targets = plan.lora_targets if plan.lora_targets is not None else family.lm_lora_targets()
    if isinstance(targets, str) and (_peft_rewrites_regex(model) or plan.train_audio_encoder == "lora"):
        import re

        targets = [name for name, _ in model.named_modules() if re.fullmatch(targets, name)]
    if plan.train_audio_encoder == "lora":
        targets = [*targets, *(n for n in encoder_linear_names(model, family) if n not in targets)]
    to_save = projector_module_names(model, family) if plan.train_projector else []
    if plan.train_audio_encoder == "full":
        to_save += encoder_module_names(model, family)
    config = LoraConfig(
        r=plan.lora_r, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout, bias="none",
        target_modules=targets, task_type="CAUSAL_LM", modules_to_save=to_save or None,
    )
    return get_peft_model(model, config)


def _peft_rewrites_regex(model: torch.nn.Module) -> bool:
    """PEFT 0.21 converts the config of MoE architectures whose layout changed in transformers 5
    (``_convert_peft_config_moe``: Qwen3-Omni, Qwen3-MoE, ...) and resolves a regex there into bare module names
    (``q_proj``), which then also match the audio tower's; full names survive the conversion."""
    try:
        from peft.utils.transformers_weight_conversion import get_checkpoint_conversion_mapping
    except ImportError:
        return False
    return get_checkpoint_conversion_mapping(getattr(model.config, "model_type", None)) is not None


def to_model_inputs(batch: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Move a processor batch to the model's device and cast its float tensors (audio features) to the model's
    dtype: processors return float32 features, and a bf16 model's audio encoder refuses them."""
    parameter = next(model.parameters())
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(parameter.device)
            if value.is_floating_point():
                value = value.to(parameter.dtype)
        moved[key] = value
    return moved


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def lora_modules(model: torch.nn.Module) -> list[str]:
    """Names of modules carrying LoRA matrices."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A]
