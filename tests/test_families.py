"""Every family end to end on its tiny checkpoint: LoRA steps, labels, generate, adapter round trip, merge, pipeline.

One parametrised test per family (``pytest -k families``). A family that cannot work with the pinned transformers
carries ``known_issue`` in the registry and runs as a *strict* xfail: when transformers fixes it, the test turns
red and the registry entry must be updated.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from transformers import pipeline

import audiotune  # noqa: F401  (registers the pipeline task)
from audiotune.train_config import TrainConfig
from audiotune.data.collator import IGNORE_INDEX, ConversationCollator
from audiotune.conversation import Example, prompt_messages
from audiotune.tasks import TASKS
from audiotune.errors import ModelFamilyError
from audiotune.generate import GenerationSettings, examples_from_audio, generate
from audiotune.merge import merge_adapter
from audiotune.models.families import FAMILIES, family_by_name, family_for_config
from audiotune.models.loading import (AdaptationPlan, encoder_linear_names, load_model, load_processor, lora_modules,
                                      prepare_for_training, resolve_family, to_model_inputs)
from audiotune.models.tiny import build_tiny
from audiotune.train import train
from tests.conftest import family_facts, tone


def _family_params():
    params = []
    for name, family in FAMILIES.items():
        marks = [pytest.mark.slow]
        if family.known_issue:
            marks.append(pytest.mark.xfail(reason=family.known_issue, strict=True, raises=ModelFamilyError))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _fixed_batch_manifest(folder, family):
    """The two clips of :func:`_examples` with their answers as a JSONL manifest, listed twice: the first two rows
    train (one fixed batch every step), the same two evaluate."""
    import json

    import soundfile as sf

    folder.mkdir(parents=True)
    rows = []
    for name, (seconds, freq), text in (("a", (1.0, 440), "A steady tone rings."),
                                       ("b", (3.5, 880), "Two short beeps, then silence.")):
        sf.write(folder / f"{name}.wav", tone(seconds, freq, family.sampling_rate), family.sampling_rate)
        rows.append({"audio_path": f"{name}.wav", "text": text})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
    return manifest


def _examples(family) -> list[Example]:
    rate = family.sampling_rate
    return [Example("a", prompt_messages(tone(1.0, 440, rate), "Describe the audio."), ["A steady tone rings."]),
            Example("b", prompt_messages(tone(3.5, 880, rate), "Describe the audio.", system_prompt="Be brief."),
                    ["Two short beeps, then silence."])]


@pytest.mark.parametrize("name", _family_params())
def test_families_end_to_end(name, synth_data, tmp_path, record_property):
    entry = family_by_name(name)
    try:
        _end_to_end(entry, synth_data, tmp_path, record_property)
    except ModelFamilyError as error:
        if entry.known_issue:  # the xfail accepts this known issue only: any other failure stays a failure
            assert entry.known_error and re.search(entry.known_error, str(error)), \
                f"{name} failed for another reason than its known issue ({entry.known_error!r}): {error}"
        raise


def _end_to_end(entry, synth_data, tmp_path, record_property) -> None:
    name = entry.name
    checkpoint = build_tiny(name, tmp_path / "tiny", seed=0, preset="micro")
    family = resolve_family(str(checkpoint))
    assert family.name == name and family.bound
    record_property("family_facts", family_facts(family))
    processor = load_processor(checkpoint)
    tokenizer = processor.tokenizer

    # Labels: exactly the assistant's answer and its end-of-turn token.
    examples = _examples(family)
    batch = ConversationCollator(processor, family, training=True)(examples)
    end_id = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    audio_id = tokenizer.convert_tokens_to_ids(family.audio_token)
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept[-1] == end_id
        # As the model writes it, with the assistant header when the model writes that too (VibeVoice-ASR).
        written = (family.assistant_header if family.model_writes_header else "") + family.format_answer(example.target)
        assert tokenizer.decode(kept[:-1]).strip() == written.strip()
        assert audio_id not in kept

    # The family's audio-token arithmetic (data check, length grouping, plan) matches what its processor does.
    prompt_collator = ConversationCollator(processor, family, training=False)
    for seconds in (1.0, 3.5, 10.0, 31.0):
        clip = tone(min(seconds, family.max_audio_seconds), 440, family.sampling_rate)
        prompt = prompt_collator(examples_from_audio([clip], "Describe the audio."))
        assert int((prompt["input_ids"] == audio_id).sum()) == family.audio_tokens(len(clip) / family.sampling_rate)

    # LoRA steps on one fixed batch (the two clips above, their answers): the loss must fall by a clear margin,
    # which a training loop that updates nothing, or an adapter that stays zero, cannot do.
    out = tmp_path / "run"
    task = TASKS[family.task or "caption"]
    manifest = _fixed_batch_manifest(tmp_path / "fixed", family)
    result = train(TrainConfig.from_flat(model=str(checkpoint), dataset=str(manifest), output_dir=str(out),
                                         per_device_train_batch_size=2, task=task.name, train_take=2,
                                         eval_split="none", eval_take=2, gradient_accumulation_steps=1,
                                         learning_rate=1e-2, lora_dropout=0.0, max_steps=10, logging_steps=1,
                                         eval_steps=10, save_steps=10, eval_generate_take=0, seed=0))
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    # A random tiny LM with its output layer frozen can only move its logits a little: 0.15 nats over ten steps is
    # a clear margin (with no update the loss on this batch stays exactly the same: no dropout, one batch).
    assert losses[-1] < losses[0] - 0.15, f"the loss on one fixed batch did not fall: {losses}"
    assert result.eval_loss is not None and result.eval_loss < losses[0] - 0.1  # the same two examples
    peft_model, loaded_family = load_model(checkpoint, adapter=out)
    assert loaded_family is family
    adapted = lora_modules(peft_model)
    assert adapted, "LoRA adapted nothing"
    assert not [n for n in adapted if family.is_encoder_module(n) or family.is_projector_module(n)
                or any(f".{p}." in f".{n}." for p in family.other_tower_prefixes)]

    # The adapter changes what the model computes and answers: its logits and its greedy answer differ from the
    # base model's, and that answer is not empty (the checks below would pass trivially on an empty one).
    prompts = examples_from_audio([tone(1.0, 440, family.sampling_rate), tone(3.5, 880, family.sampling_rate)],
                                  task.prompt)
    settings = GenerationSettings(max_new_tokens=6)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        adapter_logits = peft_model(**to_model_inputs(inputs, peft_model)).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(**to_model_inputs(inputs, peft_model)).logits
            base_answers = generate(peft_model, processor, family, prompts, batch_size=1, settings=settings)
    mask = inputs["attention_mask"].bool()
    assert (adapter_logits[mask] - base_logits[mask]).abs().max() > 0.1
    batched = generate(peft_model, processor, family, prompts, batch_size=2, settings=settings)
    single = [generate(peft_model, processor, family, [p], batch_size=1, settings=settings)[0] for p in prompts]
    assert all(answer.strip() for answer in single), f"the adapter answers nothing: {single}"
    assert single != base_answers, f"the adapter answers what the base model answers: {single}"
    assert batched == single  # left padding and masks are right for this family's processor

    # The adapter round trip: merged logits equal adapter logits.
    merged_dir = merge_adapter(str(checkpoint), str(out), tmp_path / "merged")
    merged, _ = load_model(merged_dir)
    with torch.no_grad():
        merged_logits = merged(**to_model_inputs(inputs, merged)).logits
    torch.testing.assert_close(merged_logits[mask], adapter_logits[mask], atol=1e-4, rtol=1e-4)

    _encoder_lora_round_trip(checkpoint, family, inputs, mask, tmp_path)

    # The guide's pipeline call on the merged model answers what the adapter answers for the same clip and prompt.
    merged_processor = load_processor(merged_dir)
    pipe = pipeline("audio-text-to-text", model=merged, processor=merged_processor)
    output = pipe(tone(1.0, 440, family.sampling_rate), prompt=task.prompt, generate_kwargs={"max_new_tokens": 6})
    assert output == [{"generated_text": single[0]}]


def _encoder_lora_round_trip(checkpoint, family, inputs, mask, tmp_path) -> None:
    """The audio encoder trains when asked (--train-audio-encoder lora): LoRA reaches the tower's linears, found in
    the module tree, and such an adapter (B random here, so it changes the output) reloads and merges exactly. A
    family without such an encoder refuses by name."""
    base, _ = load_model(checkpoint)
    if not encoder_linear_names(base, family):  # no encoder (Gemma 4 unified) or a codec (Apertus' WavTokenizer)
        assert family.name in ("gemma4_unified", "apertus")  # a new family without one is a decision, not an accident
        with pytest.raises(ModelFamilyError, match="has no audio encoder with layers to train"):
            prepare_for_training(base, family, AdaptationPlan(train_audio_encoder="lora"))
        return
    run = prepare_for_training(base, family, AdaptationPlan(lora_r=2, train_audio_encoder="lora"))
    assert [n for n in lora_modules(run) if family.is_encoder_module(n.removeprefix("base_model.model."))]
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in run.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.05)
        run.eval()
        expected = run(**to_model_inputs(inputs, run)).logits[mask]
    run.save_pretrained(tmp_path / "encoder-lora")
    reloaded, _ = load_model(checkpoint, adapter=tmp_path / "encoder-lora")
    folded, _ = load_model(merge_adapter(str(checkpoint), str(tmp_path / "encoder-lora"), tmp_path / "encoder-merged"))
    with torch.no_grad():  # reloaded: the same operations; merged: the LoRA product folded in, summed otherwise
        for other, tolerance in ((reloaded, 1e-5), (folded, 1e-3)):
            torch.testing.assert_close(other(**to_model_inputs(inputs, other)).logits[mask], expected,
                                       atol=tolerance, rtol=tolerance)


def test_unknown_model_type_lists_the_supported_families():
    class Config:
        model_type = "not_an_audio_model"

    with pytest.raises(ModelFamilyError) as error:
        family_for_config(Config())
    message = str(error.value)
    assert "not_an_audio_model" in message and "families.py" in message
    for family in FAMILIES.values():
        assert family.name in message


def test_every_family_has_a_builder_and_a_published_architecture():
    from audiotune.models.tiny import builder_for
    from audiotune.plan import published_ids

    shipped = set(published_ids())
    for family in FAMILIES.values():
        assert callable(builder_for(family.name))
        assert family.hub_id in shipped, f"{family.name}: no published architecture for {family.hub_id}"


def test_per_family_audio_quirks_are_applied_before_the_processor():
    import numpy as np

    from audiotune.models.families import AUDIO_FLAMINGO_3, QWEN2_AUDIO
    from tests.conftest import offline_entry

    MUSIC_FLAMINGO = offline_entry("musicflamingo")  # its tail trim reads the window and rate
    window = 30 * 16000
    just_past = np.ones(window + 100, dtype=np.float32)
    assert len(MUSIC_FLAMINGO.prepare_audio(just_past)) == window  # a 0-token window would break its time embeddings
    assert len(MUSIC_FLAMINGO.prepare_audio(np.ones(window + 400, dtype=np.float32))) == window + 400
    assert len(AUDIO_FLAMINGO_3.prepare_audio(just_past)) == window + 100  # nothing to fix for AF3
    short = QWEN2_AUDIO.prepare_audio(np.ones(100, dtype=np.float32))
    assert len(short) == 1600 and short[:100].sum() == 100 and not short[100:].any()  # padded with silence


def _served_family_params():
    return [pytest.param(name, marks=pytest.mark.slow, id=name) for name, family in FAMILIES.items()
            if not family.known_issue]


@pytest.mark.parametrize("name", _served_family_params())
def test_families_serve_through_the_openai_client(name, tmp_path):
    """The models page says every working family serves: one ``input_audio`` request with the real client.

    The app runs in this process (``test_serve`` covers the uvicorn process, its signals and limits): what differs
    between families is the engine, the request parsing and the batching, and those are all here.
    """
    import base64

    from fastapi.testclient import TestClient
    from openai import OpenAI

    from audiotune.audio import load_audio
    from audiotune.generate import generate_batch
    from audiotune.serve.app import create_app
    from audiotune.engines.native import NativeEngine as Engine

    from tests.test_serve import _b64

    checkpoint = build_tiny(name, tmp_path / "tiny", seed=0, preset="micro")
    engine = Engine(str(checkpoint))
    family = engine.family
    data = _b64(tone(1.5, 440, family.sampling_rate), family.sampling_rate)
    with TestClient(create_app(engine)) as http:  # the context runs the app's lifespan: the batcher starts and stops
        client = OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=120, http_client=http)
        audio = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, max_tokens=6, temperature=0,
            messages=[{"role": "user", "content": [audio, {"type": "text", "text": "Describe the audio."}]}])
    # The served answer is generate()'s for the same clip (the WAV bytes sent, decoded) and prompt, greedy.
    sent = load_audio(base64.b64decode(data), family.sampling_rate, "sent clip")
    local = generate_batch(engine.model, engine.processor, family, examples_from_audio([sent], "Describe the audio."),
                           GenerationSettings(max_new_tokens=6))[0]
    assert reply.choices[0].message.content == local.text
    assert reply.usage.completion_tokens == local.completion_tokens > 0
    assert reply.usage.prompt_tokens == local.prompt_tokens > family.audio_tokens(1.5)  # audio placeholders counted


def test_a_conventional_checkpoint_needs_no_registry_entry(micro_af3, monkeypatch):
    """Without its entry, AF3's tiny checkpoint resolves to a family of its own with every fact inferred, the
    same facts the entry gives."""
    import audiotune.models.families as families
    from audiotune.models import loading

    registered = resolve_family(str(micro_af3))
    # The registry without af3, its order kept afterwards (delitem's undo would move af3 to the end).
    monkeypatch.setattr(families, "FAMILIES", {k: v for k, v in families.FAMILIES.items() if k != "af3"})
    monkeypatch.setattr(loading, "_BOUND", {})
    anonymous = resolve_family(str(micro_af3))
    assert anonymous.name == "audioflamingo3" and anonymous.overridden == ()
    for fact in ("model_class", "audio_token", "sampling_rate", "window_seconds", "assistant_header", "end_of_turn",
                 "lm_lora_regex", "encoder_prefixes", "projector_prefixes"):
        assert getattr(anonymous, fact) == getattr(registered, fact), fact
    assert anonymous.audio_tokens(2.0) == registered.audio_tokens(2.0) == 50
    assert registered.assistant_header == "<|im_start|>assistant\n" and registered.end_of_turn == "<|im_end|>"
    assert registered.encoder_prefixes == ("model.audio_tower",)


def test_what_cannot_be_inferred_is_one_clear_error(micro_af3):
    """A processor with no audio placeholder: the error names the fact and how to override it."""
    from audiotune.models.facts import bind
    from audiotune.models.family import Family

    processor = load_processor(micro_af3)
    processor.audio_token = None
    processor.tokenizer.audio_token = None
    with pytest.raises(ModelFamilyError) as error:
        bind(Family(name="mystery", model_types=("audioflamingo3",)), processor=processor)
    message = str(error.value)
    assert "'audio_token'" in message and "families.py" in message and "audio_token=..." in message


def test_every_family_names_the_optional_packages_its_processor_needs():
    """Without the vision-audio extra a family must stop with "needs X (pip install …)", not transformers' raw
    ImportError: every optional package that transformers' own processor classes for the family declare
    (``@requires(backends=...)``, read from the classes, not instantiated) is in the entry's ``requires_packages``."""
    import transformers
    from transformers.models.auto import (feature_extraction_auto, image_processing_auto, processing_auto,
                                          video_processing_auto)

    optional = {"torchaudio", "torchvision", "timm"}  # the vision-audio extra; the rest are base dependencies
    mappings = (feature_extraction_auto.FEATURE_EXTRACTOR_MAPPING_NAMES, processing_auto.PROCESSOR_MAPPING_NAMES,
                image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES, video_processing_auto.VIDEO_PROCESSOR_MAPPING_NAMES)
    declared_somewhere = set()
    for family in FAMILIES.values():
        needs = set()
        for model_type in family.model_types:
            for mapping in mappings:
                names = mapping.get(model_type)
                names = list(names.values()) if isinstance(names, dict) else names
                for name in names if isinstance(names, (list, tuple)) else [names]:
                    cls = getattr(transformers, name, None) if isinstance(name, str) else None
                    needs |= {str(b) for b in getattr(cls, "__backends", ())} & optional
        declared_somewhere |= needs
        assert needs <= set(family.requires_packages), (family.name, needs, family.requires_packages)
    assert {"torchaudio", "torchvision"} <= declared_somewhere  # the check reads real declarations
