"""Tiny, randomly initialised checkpoints of real architectures, built offline by one generic builder.

Why: tests, the demo and the benchmarks must exercise the *real* code path (``from_pretrained(dir)`` of the real
transformers classes, the real chat template and feature extractor) on a machine with no network and no GPU. A tiny
checkpoint is the real architecture with small sizes, random weights, and a tokenizer trained here in a second.

How (the same for every family, :func:`build_tiny`):

1. the family's published architecture (``published/<hub id>.json``, the file ``audiotune plan`` uses) is loaded
   with its config class, which fills every default, and shrunk by :func:`shrink_config`: layers, widths, heads,
   experts and per-layer lists of every sub-config, the language model to the preset's ``text`` sizes, every other
   tower to its ``encoder`` sizes;
2. the published processor files (``published/processors/<hub id>/``: feature-extractor settings, special tokens,
   chat template, exactly as the checkpoint ships them) are copied, and the tokenizer the checkpoint names is trained
   here with those special tokens (:func:`train_tokenizer`; a mistral-common ``tekken.json`` likewise, and a second
   tokenizer the processor loads from a subfolder, such as Nemotron 3.5 Transcribe's ``alignment_tokenizer/``);
3. ``tiny.json``'s ``added_tokens`` (added, not special) join the vocabulary; token ids in the config
   (``tiny.json``'s ``token_ids``: config key → token) are remapped to the small vocabulary,
   ``tiny.json``'s ``sizes`` apply what a config cannot say generically (data, per preset), a family's
   ``tiny_hook`` (``families.py``) the rare rest, and everything is saved with ``save_pretrained``.

A family whose published checkpoint is more than the part it trains (Qwen Omni: a talker and a vocoder around the
thinker) also gets a tiny *complete* checkpoint (:func:`build_tiny_full`): the same tiny part inside the complete
architecture of ``published/complete/<hub id>.json``, shrunk alike; ``audiotune merge``'s tests load it with the real
complete class.

Same seed → identical files. Compute proportions (the benchmarks depend on them): the real Audio Flamingo 3 pairs a
Whisper-large-v3 encoder (32 layers, d=1280, always run over full 30 s windows of 1500 positions) with Qwen2.5-7B.
For a typical 10 s AudioCaps clip the encoder costs ≈2.3 TFLOP per window (linear ≈1.9 + attention ≈0.4) while the
LM costs ≈13 GFLOP/token × ≈310 tokens (250 audio tokens + prompt + caption) ≈ 4 TFLOP forward: an encoder/LM
forward ratio of ≈0.55. The ``default`` preset keeps that proportion: a 2-layer d=128 encoder still runs over all
1500 positions of a 30 s window (≈3.5 GFLOP: attention dominates at this width) and an 8-layer d=256 Qwen2 LM costs
≈15 MFLOP/token, ≈4.7 GFLOP for the same 310 tokens: ratio ≈0.75 (measured on CPU: encoder ≈0.03 s vs LM ≈0.06 s
per clip, ≈0.5). ``tests/test_tiny.py`` guards the proportion. The ``micro`` preset is for unit tests only.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from ..errors import ModelFamilyError
from .facts import model_class_of
from .families import FAMILIES, family_by_name
from .family import Family

PUBLISHED_DIR = Path(__file__).parent / "published"
PROCESSORS_DIR = PUBLISHED_DIR / "processors"
COMPLETE_DIR = PUBLISHED_DIR / "complete"  # what a complete checkpoint adds around the part a family trains

PRESETS: dict[str, dict] = {
    "default": {
        "encoder": {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 512},
        "text": {"hidden": 256, "layers": 8, "heads": 8, "kv_heads": 2, "intermediate": 1024},
        "vocab_size": 2048,
    },
    "micro": {
        "encoder": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "text": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128},
        "vocab_size": 1024,
    },
}

# Config keys by what they size (transformers' names across encoder and decoder configs).
SIZE_KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "d_model", "n_embd", "embed_dim", "hidden_dim", "encoder_embed_dim"),
    "layers": ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer", "decoder_layers",
               "conf_num_hidden_layers", "depth", "num_blocks"),
    "heads": ("num_attention_heads", "encoder_attention_heads", "n_head", "num_heads", "decoder_attention_heads",
              "conf_num_attention_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "intermediate": ("intermediate_size", "encoder_ffn_dim", "ffn_dim", "decoder_ffn_dim", "mlp_dim"),
}
EXPERT_KEYS = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
               "moe_topk": 2, "n_shared_experts": 1}
MOE_WIDTH_KEYS = ("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size")


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: chat framing, common prompts and caption words."""
    from ..caption_words import vocabulary_text

    prompts = [
        "You are a helpful assistant.", "Describe the audio.", "Describe the audio in detail.",
        "Transcribe the input speech.", "What do you hear?", "Caption this sound.",
        "What sound is this? Answer with one of:", "system", "user", "assistant",
    ]
    general = (
        "the a an of and to in is it that for on with as was at by this be from or are not but have "
        "sound audio speech music noise voice person man woman dog bird car engine water wind rain "
        "door bell phone beep tone whistle hum buzz click knock loud quiet soft short long first then "
        "after before while one two three four five six seven eight nine ten yes no"
    )
    return prompts * 20 + [vocabulary_text()] * 20 + [general] * 20


# --- 1. the config ----------------------------------------------------------------------------------------------

def published_config(family: Family, part: str | None = None) -> dict:
    """The family's published architecture as a full config dict (class defaults filled in); ``part``: the
    sub-config the family's model class takes (Qwen2.5-Omni's ``thinker_config``)."""
    from transformers import AutoConfig

    path = PUBLISHED_DIR / f"{family.hub_id.replace('/', '--')}.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    config = AutoConfig.for_model(**data)
    return (getattr(config, part) if part else config).to_dict()


def _text_path(config: dict) -> tuple[str, ...]:
    """Where the language model's config sits in a full config dict (``()``: the top level)."""
    from transformers import AutoConfig

    loaded = AutoConfig.for_model(**copy.deepcopy(config))
    text = loaded.get_text_config(decoder=True)

    def find(node, path):
        if node is text:
            return path
        for key, value in vars(node).items():
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):
                found = find(value, (*path, key))
                if found is not None:
                    return found
        return None

    return find(loaded, ()) or ()


def _shrink_node(node: dict, sizes: dict[str, int], old_text_hidden: int | None, new_text_hidden: int) -> None:
    layers_before = next((node[k] for k in SIZE_KEYS["layers"] if isinstance(node.get(k), int)), None)
    own_hidden = next((node[k] for k in SIZE_KEYS["hidden"] if isinstance(node.get(k), int)), None)
    for role, keys in SIZE_KEYS.items():
        for key in keys:
            if isinstance(node.get(key), int) and role in sizes:
                node[key] = sizes[role]
    if "kv_heads" not in sizes and isinstance(node.get("num_key_value_heads"), int):
        node["num_key_value_heads"] = sizes["heads"]  # a tower: plain multi-head attention
    for key in ("head_dim", "dim_head"):
        if isinstance(node.get(key), int) and "hidden" in sizes:
            node[key] = sizes["hidden"] // sizes["heads"]
    rope = node.get("rope_parameters")
    if isinstance(rope, dict) and "hidden" in sizes:  # longrope: one factor per rotary frequency
        head_dim = node.get("head_dim") or sizes["hidden"] // sizes["heads"]
        rotary = int(head_dim * rope.get("partial_rotary_factor", node.get("partial_rotary_factor") or 1.0)) // 2
        for key in ("short_factor", "long_factor"):
            if isinstance(rope.get(key), list):
                rope[key] = rope[key][:rotary]
        section = rope.get("mrope_section")
        if isinstance(section, list) and sum(section) != rotary:  # multimodal rope: split the rotary half alike
            scaled = [max(1, v * rotary // sum(section)) for v in section]
            scaled[-1] += rotary - sum(scaled)
            rope["mrope_section"] = scaled
    for key, value in EXPERT_KEYS.items():
        if isinstance(node.get(key), int) and node[key] > value:
            node[key] = value
    for key in MOE_WIDTH_KEYS:
        if isinstance(node.get(key), int):
            node[key] = sizes["intermediate"] // 2
    for key, value in list(node.items()):
        if isinstance(value, list) and layers_before and len(value) == layers_before and sizes.get("layers"):
            node[key] = value[: sizes["layers"]]  # per-layer lists (layer_types, sparsity patterns)
        elif (isinstance(value, dict) and value and layers_before and "model_type" not in value
              and all(str(k).isdigit() for k in value) and not all(isinstance(v, dict) for v in value.values())):
            node[key] = {k: v for k, v in value.items() if int(k) < sizes["layers"]}  # per-layer values
        elif (isinstance(value, dict) and value and layers_before and "model_type" not in value
              and all(str(k).isdigit() for k in value)):
            # Per-layer overrides (Gemma 4's wider full-attention heads, dots3's MLA layers) hold the real model's
            # sizes, which the shrink above does not reach, and with fewer layers (and a last layer forced to a
            # type) they would make one layer type differ from itself. A tiny model keeps one shape per layer type.
            node[key] = {}
        elif (old_text_hidden and isinstance(value, int) and value == old_text_hidden and key not in
              ("vocab_size",) and not any(key in k for k in SIZE_KEYS.values())):
            node[key] = new_text_hidden  # a tower's output width that feeds the language model
        elif (own_hidden and own_hidden > 256 and isinstance(value, int) and value == own_hidden
              and not any(key in k for k in SIZE_KEYS.values()) and key != "vocab_size"):
            node[key] = sizes["hidden"]  # a width tied to the block's own (conv channels of a conformer)


def shrink_config(config: dict, preset: dict) -> dict:
    """A full config dict with the language model at the preset's ``text`` sizes and every other sub-config (audio,
    vision, projector) at its ``encoder`` sizes; per-layer lists truncated, experts capped. The structure (which
    blocks exist, their kinds) is untouched: that is what the tiny checkpoint tests."""
    config = copy.deepcopy(config)
    text_path = _text_path(config)
    text = config
    for key in text_path:
        text = text[key]
    old_text_hidden = next((text[k] for k in SIZE_KEYS["hidden"] if isinstance(text.get(k), int)), None)
    new_text_hidden = preset["text"]["hidden"]

    def walk(node: dict, path: tuple[str, ...]) -> None:
        own = next((node[k] for k in SIZE_KEYS["hidden"] if isinstance(node.get(k), int)), None)
        # The language model, and any sub-config exactly as wide (an adaptor that works at the LM's width).
        is_text = path == text_path or (path and old_text_hidden and own == old_text_hidden)
        _shrink_node(node, preset["text"] if is_text else preset["encoder"],
                     None if is_text else old_text_hidden, new_text_hidden)
        for key, value in node.items():
            if isinstance(value, dict) and "model_type" in value:
                walk(value, (*path, key))

    walk(config, ())
    return config


def _set_path(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _merge(config: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


# --- 2. the tokenizer -------------------------------------------------------------------------------------------

def special_tokens(tokenizer_config: dict) -> list[str]:
    """Every special token a published ``tokenizer_config.json`` names, in its order."""
    tokens: list[str] = []
    for key, value in tokenizer_config.items():
        if key.endswith("_token") and isinstance(value, str):
            tokens.append(value)
        elif key.endswith("_token") and isinstance(value, dict) and "content" in value:
            tokens.append(value["content"])
    extra = tokenizer_config.get("extra_special_tokens") or tokenizer_config.get("additional_special_tokens") or []
    tokens += list(extra.values()) if isinstance(extra, dict) else list(extra)
    return list(dict.fromkeys(tokens))


def train_tokenizer(tokenizer_config: dict, vocab_size: int, out: Path) -> None:
    """The checkpoint's tokenizer class (its normaliser and pre-tokeniser) trained on :func:`tokenizer_corpus`
    with the published special tokens; writes ``tokenizer.json`` next to the published ``tokenizer_config.json``."""
    import transformers

    cls = getattr(transformers, tokenizer_config["tokenizer_class"])
    specials = special_tokens(tokenizer_config)
    try:
        base = cls()
    except ValueError:  # a class with no pipeline of its own (TokenizersBackend): byte-level BPE, as GPT-2's
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        base = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    trained = base.train_new_from_iterator(tokenizer_corpus(), vocab_size=vocab_size, new_special_tokens=specials)
    trained.backend_tokenizer.save(str(out / "tokenizer.json"))


def train_tekken(tekken: dict, vocab_size: int, out: Path) -> None:
    """A mistral-common ``tekken.json``: the published head (pattern, special tokens, audio section) with
    byte-level BPE ranks trained here, in tekken's order (256 single bytes, then merges in training order)."""
    import base64

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = len(tekken["special_tokens"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tekken["config"]["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size - specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
        show_progress=False))
    unicode_to_byte = {u: b for b, u in bytes_to_unicode().items()}
    ranks = [bytes([i]) for i in range(256)]
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        ranks.append(bytes(unicode_to_byte[c] for c in left) + bytes(unicode_to_byte[c] for c in right))

    def as_str(token: bytes) -> str | None:
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            return None

    tekken = copy.deepcopy(tekken)
    tekken["vocab"] = [{"rank": i, "token_bytes": base64.b64encode(t).decode("ascii"), "token_str": as_str(t)}
                       for i, t in enumerate(ranks)]
    tekken["config"].update(num_vocab_tokens=len(ranks), default_vocab_size=specials + len(ranks),
                            default_num_special_tokens=specials)
    (out / "tekken.json").write_text(json.dumps(tekken, ensure_ascii=False), encoding="utf-8")


# --- 3. the build -----------------------------------------------------------------------------------------------

def tiny_spec(family: Family) -> tuple[Path, dict]:
    """``(folder, tiny.json)`` of the family's published processor files."""
    folder = PROCESSORS_DIR / family.hub_id.replace("/", "--")
    if not folder.is_dir():
        raise ModelFamilyError(
            f"No published processor files for {family.hub_id} (the {family.name} family): add its "
            f"processor_config.json, tokenizer_config.json, chat template and tiny.json under {folder}.")
    return folder, json.loads((folder / "tiny.json").read_text())


def construct(model_class, config, seed: int):
    """``model_class(config)`` under ``seed``, with every parameter initialised.

    Why: transformers' ``_init_weights`` skips a few parameters (in 5.24, the fused ``gate_up_proj``/``down_proj`` of
    Qwen3-Omni's talker experts) and leaves them as ``torch.empty`` left them: whatever the memory held, a NaN
    included, so the files changed from run to run and a bit-for-bit comparison of them failed at random. Under
    deterministic algorithms torch fills uninitialised memory with NaN; a parameter still holding NaN after the
    model's own initialisation is drawn here from N(0, the config's ``initializer_range``), seeded.
    """
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        torch.manual_seed(seed)
        model = model_class(config)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    generator = torch.Generator().manual_seed(seed + 3)
    std = getattr(config, "initializer_range", 0.02)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.isnan().any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def build_tiny(family: str, out_dir: str | Path, seed: int = 0, preset: str = "default") -> Path:
    """Build the tiny checkpoint of ``family`` in ``out_dir`` (``preset``: default or micro)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    if preset not in PRESETS:
        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    entry = family_by_name(family)
    sizes = PRESETS[preset]
    folder, spec = tiny_spec(entry)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = entry.missing_packages()
    if missing:
        raise ModelFamilyError(f"The {entry.name} family needs {', '.join(missing)} to build or load "
                               f"(pip install {' '.join(missing)}).")

    # Processor files as published; the tokenizer trained here.
    for path in sorted(folder.iterdir()):
        if path.is_dir():  # a second tokenizer the processor loads from its subfolder (Nemotron's alignment one)
            shutil.copytree(path, out / path.name, dirs_exist_ok=True)
            train_tokenizer(json.loads((path / "tokenizer_config.json").read_text()), sizes["vocab_size"],
                            out / path.name)
        elif path.name not in ("tiny.json", "tekken.json"):
            shutil.copyfile(path, out / path.name)
    if spec.get("processor", {}).get(preset):  # the real processor's image sizes, shrunk for a tiny vision tower
        processor_config = json.loads((out / "processor_config.json").read_text())
        _merge(processor_config, spec["processor"][preset])
        (out / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    if (folder / "tekken.json").exists():
        train_tekken(json.loads((folder / "tekken.json").read_text()), sizes["vocab_size"], out)
    else:
        train_tokenizer(json.loads((folder / "tokenizer_config.json").read_text()), sizes["vocab_size"], out)
    kwargs = dict(entry.processor_kwargs)
    processor = AutoProcessor.from_pretrained(str(out), **kwargs)
    tokenizer = processor.tokenizer
    if spec.get("added_tokens"):  # added tokens that are not special (decoded with the text: Qwen3-ASR's <asr_text>)
        tokenizer.add_tokens(spec["added_tokens"])

    def token_id(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    published = published_config(entry, spec.get("config_path"))
    text_path = _text_path(published)
    config = shrink_config(published, sizes)
    _set_path(config, ".".join((*text_path, "vocab_size")), len(tokenizer))
    for key, token in spec.get("token_ids", {}).items():
        _set_path(config, key, [token_id(t) for t in token] if isinstance(token, list) else
                  None if token is None else token_id(token))
    _merge(config, spec.get("sizes", {}).get(preset, {}))
    if entry.tiny_hook is not None:
        entry.tiny_hook(config, tokenizer, sizes)
    config = AutoConfig.for_model(**config)

    model = construct(getattr(transformers, model_class_of(entry)), config, seed)
    generation = {k: ([token_id(t) for t in v] if isinstance(v, list) else token_id(v))
                  if k.endswith("token_id") else v for k, v in spec.get("generation", {}).items()}
    model.generation_config = GenerationConfig(do_sample=False, max_new_tokens=64, **generation)
    model.save_pretrained(out)
    if not (folder / "tekken.json").exists():
        processor.save_pretrained(out)
    for adapter in spec.get("modality_adapters", []):
        write_modality_adapter(model, adapter, out, seed)
    return out


def published_complete_config(family: Family) -> dict:
    """The family's complete published checkpoint as a config dict (class defaults filled in): what
    ``published/complete/<hub id>.json`` adds around the part the family trains (Qwen Omni's talker and vocoder
    around its thinker), with that part's published architecture as its sub-config."""
    from transformers import AutoConfig

    path = COMPLETE_DIR / f"{family.hub_id.replace('/', '--')}.json"
    if family.complete_model_class is None or not path.exists():
        raise ModelFamilyError(f"The {family.name} family has no complete checkpoint beyond its "
                               f"{family.model_class}: build its tiny checkpoint with build_tiny.")
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    data[f"{family.complete_model_part}_config"] = published_config(family)
    return AutoConfig.for_model(**data).to_dict()


def build_tiny_full(family: str, out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """The tiny *complete* checkpoint of a family whose trained model is one part of the published one (Qwen Omni:
    thinker + talker + vocoder), in ``out_dir``.

    Why: ``audiotune merge`` of an adapter on such a base must write the complete checkpoint back, and only a real
    complete checkpoint (the real class's ``from_pretrained``, ``generate(..., return_audio=True)``) can show it did.
    How: the part is :func:`build_tiny`'s, weights and all (same seed, same files); the rest is
    ``published/complete/<hub id>.json`` shrunk by :func:`shrink_config` with the same preset, then tiny.json's
    ``full`` section: ``token_ids`` (config key -> token of the tiny vocabulary, or a negative int: a row counted
    from its end, for ids the real tokenizer has no token for), ``sizes`` per preset, and ``speakers`` (name -> text
    bos row) for a ``spk_dict.pt``.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    entry = family_by_name(family)
    full_spec = tiny_spec(entry)[1].get("full")
    published = published_complete_config(entry)
    if full_spec is None:
        raise ModelFamilyError(f"No 'full' section in the {entry.name} family's tiny.json: add its token ids and "
                               "sizes (see the Qwen Omni entries).")
    out = build_tiny(family, out_dir, seed=seed, preset=preset)
    part_key = f"{entry.complete_model_part}_config"
    part_config = json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    vocab = AutoConfig.for_model(**part_config).get_text_config(decoder=True).vocab_size

    def token_id(token: str | int) -> int:
        return vocab + token if isinstance(token, int) else tokenizer.convert_tokens_to_ids(token)

    config = shrink_config(published, PRESETS[preset])
    config[part_key] = part_config
    for key, token in full_spec.get("token_ids", {}).items():
        _set_path(config, key, token_id(token))
    _merge(config, full_spec.get("sizes", {}).get(preset, {}))
    _set_dtypes(config, "float32")  # the weights' (the published bfloat16 would load some sub-models in it)
    config = AutoConfig.for_model(**config)

    part = getattr(transformers, model_class_of(entry)).from_pretrained(str(out))
    model = construct(getattr(transformers, entry.complete_model_class), config, seed + 1)
    getattr(model, entry.complete_model_part).load_state_dict(part.state_dict())
    model.generation_config = part.generation_config
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    saved["architectures"] = published["architectures"]  # the real checkpoint's name (save writes the class's)
    (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    speakers = full_spec.get("speakers")
    if speakers:
        write_speakers(model, {name: token_id(row) for name, row in speakers.items()}, out, seed)
    return out


def _set_dtypes(config: dict, dtype: str) -> None:
    for key, value in config.items():
        if key in ("dtype", "torch_dtype") and value is not None:
            config[key] = dtype
        elif isinstance(value, dict):
            _set_dtypes(value, dtype)


def write_speakers(model, bos_ids: dict[str, int], out: Path, seed: int) -> None:
    """``spk_dict.pt`` as Qwen2.5-Omni ships it beside its weights: per voice, the text bos id the talker starts
    from, a speaker embedding (``cond``) and a reference mel (``ref_mel``) for the vocoder's DiT, random here
    (``Qwen2_5OmniForConditionalGeneration.from_pretrained`` loads it; ``generate`` reads the three keys)."""
    import torch

    dit = model.config.token2wav_config.dit_config
    generator = torch.Generator().manual_seed(seed + 2)
    voices = {name: {"bos_token": bos,
                     "cond": torch.randn(1, dit.enc_emb_dim, generator=generator),
                     "ref_mel": torch.randn(1, 2 * dit.block_size, dit.mel_dim, generator=generator)}
              for name, bos in bos_ids.items()}
    torch.save(voices, out / "spk_dict.pt")


def write_modality_adapter(model, spec: dict, out: Path, seed: int) -> None:
    """Write a LoRA the real checkpoint ships beside its weights (``spec``: tiny.json's ``modality_adapters`` entry:
    subfolder, LoraConfig fields, and whether the keys drop PEFT's ``base_model.model.`` prefix as transformers'
    Phi-4 converter writes them). Its B matrices are random, not PEFT's zeros: folding it must change the model."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    fields = {k: v for k, v in spec.items() if k not in ("subfolder", "strip_prefix") and not k.startswith("_")}
    config = LoraConfig(**fields)
    peft = get_peft_model(copy.deepcopy(model), config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder = out / spec["subfolder"] if spec["subfolder"] else out
    config.base_model_name_or_path = None
    config.save_pretrained(str(folder))
    state = get_peft_model_state_dict(peft)
    if spec.get("strip_prefix"):
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    if folder == out and (out / "model.safetensors").exists():
        _index_weights(out)


def _index_weights(out: Path) -> None:
    """Name the model's weight file in ``model.safetensors.index.json``, as a real (sharded) checkpoint does.

    Why: with an adapter_model.safetensors beside the weights, a loader that globs ``*.safetensors`` (vLLM's,
    without an index) reads the adapter as model weights; the real multi-GB checkpoints are sharded and indexed.
    """
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = sorted(handle.keys())
    index = {"metadata": {"total_size": (out / "model.safetensors").stat().st_size},
             "weight_map": {key: "model.safetensors" for key in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def builder_for(family: str):
    """The builder of ``family`` (every family shares :func:`build_tiny`); a clear error for an unknown one."""
    name = family_by_name(family).name
    tiny_spec(FAMILIES[name])
    return lambda out_dir, seed=0, preset="default": build_tiny(name, out_dir, seed=seed, preset=preset)


def builder_files(family: Family) -> list[Path]:
    """Every file a tiny checkpoint of ``family`` is built from: the package's model code (the builder, the registry
    and its hooks), the words its tokenizer is trained on, and the family's published architecture and processor
    files."""
    models = Path(__file__).parent
    stem = family.hub_id.replace("/", "--")
    published = [PUBLISHED_DIR / f"{stem}.json", COMPLETE_DIR / f"{stem}.json",
                 *sorted((PROCESSORS_DIR / stem).rglob("*"))]
    words = models.parent / "caption_words.py"
    return sorted(models.glob("*.py")) + [words] + [f for f in published if f.is_file()]


def builder_digest(family: Family) -> str:
    """A short hash of :func:`builder_files` (names and contents): a cached build is reused only while it holds."""
    import hashlib

    digest = hashlib.sha256()
    for path in builder_files(family):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_tiny(family: str) -> Path:
    """The family's micro checkpoint in the user's cache (built on first use): ``loading.offline_facts`` reads the
    facts of a registry entry with no checkpoint at hand from it. The cache is keyed by the builder's inputs, not
    the package version: a checkpoint built by older code or from other published files is never picked up."""
    import os

    entry = family_by_name(family)
    from ..cache_dir import cache_root

    root = cache_root() / "tiny-facts"
    out = root / f"{entry.name}-{builder_digest(entry)}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        build_tiny(family, tmp, seed=0, preset="micro")
        try:
            tmp.rename(out)  # atomic; fails if another process put its (identical) build there first
        except OSError:
            if not (out / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return out
