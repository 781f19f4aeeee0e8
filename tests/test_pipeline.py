"""``pipeline("audio-text-to-text")`` works after ``import audiotune``, for every input form."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AudioFlamingo3ForConditionalGeneration, pipeline

import audiotune  # noqa: F401  (registers the task)
from audiotune.audio import resample
from audiotune.conversation import Example
from audiotune.generate import GenerationSettings, generate
from audiotune.merge import merge_adapter
from audiotune.models.loading import load_model, load_processor, to_model_inputs
from audiotune.pipeline import _Chat
from tests.conftest import tone


@pytest.fixture(scope="module")
def merged_pipe(trained_adapter, tiny_af3, tmp_path_factory):
    merged_dir = merge_adapter(str(tiny_af3), str(trained_adapter), tmp_path_factory.mktemp("merged"))
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(merged_dir)
    return pipeline("audio-text-to-text", model=model, processor=load_processor(merged_dir))


@pytest.mark.slow
def test_every_input_form_gives_the_same_answer(merged_pipe, tmp_path):
    wave = tone(1.5, 440)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 16000)
    wave_44k = tone(1.5, 440, rate=44100)
    kwargs = {"generate_kwargs": {"max_new_tokens": 20}}
    reference = merged_pipe(wave, **kwargs)
    assert isinstance(reference, list) and set(reference[0]) == {"generated_text"}
    assert reference[0]["generated_text"]
    for item in ((wave, 16000), {"array": wave, "sampling_rate": 16000}, {"raw": wave, "sampling_rate": 16000},
                 str(path)):
        assert merged_pipe(item, **kwargs) == reference
    # 44.1 kHz input is resampled: it answers exactly like its own 16 kHz resample, with 1.5 s of audio tokens.
    assert merged_pipe((wave_44k, 44100), **kwargs) == merged_pipe((resample(wave_44k, 44100, 16000), 16000), **kwargs)
    audio_id = merged_pipe.processor.tokenizer.convert_tokens_to_ids(merged_pipe.family.audio_token)
    encoded = merged_pipe.preprocess((wave_44k, 44100))["input_ids"]
    assert int((encoded == audio_id).sum()) == merged_pipe.family.audio_tokens(1.5)
    chat = [{"role": "user", "content": [{"type": "audio", "path": str(path)},
                                         {"type": "text", "text": "Describe the audio."}]}]
    assert merged_pipe(chat, **kwargs) == reference
    batch = merged_pipe([wave, wave], **kwargs)
    assert batch == [reference, reference]


@pytest.mark.slow
def test_multi_turn_chat(merged_pipe):
    wave = tone(1.0)
    first = {"role": "user", "content": [{"type": "audio", "audio": wave}, {"type": "text", "text": "Describe it."}]}
    chat = [first, {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]},
            {"role": "user", "content": [{"type": "text", "text": "Now in other words."}]}]
    out = merged_pipe(chat, max_new_tokens=12)
    # The whole conversation is the prompt: both user turns and the assistant's reply, in order, and the audio.
    encoded = merged_pipe.preprocess(_Chat(chat))
    text = merged_pipe.processor.tokenizer.decode(encoded["input_ids"][0])
    assert text.index("Describe it.") < text.index("A tone.") < text.index("Now in other words.")
    audio_id = merged_pipe.processor.tokenizer.convert_tokens_to_ids(merged_pipe.family.audio_token)
    assert int((encoded["input_ids"] == audio_id).sum()) == merged_pipe.family.audio_tokens(1.0)
    # The answer is what generate() gives for the same conversation (greedy) ...
    example = Example("chat", [merged_pipe._decode_message(m) for m in chat], [""])
    assert out[0]["generated_text"] == generate(merged_pipe.model, merged_pipe.processor, merged_pipe.family,
                                                [example], settings=GenerationSettings(max_new_tokens=12))[0]
    # ... and the earlier turns change what the model predicts next, against the last question alone.
    question = {"type": "text", "text": "Now in other words."}
    alone = merged_pipe.preprocess(_Chat([{"role": "user", "content": [{"type": "audio", "audio": wave}, question]}]))
    with torch.no_grad():
        logits = [merged_pipe.model(**to_model_inputs(batch, merged_pipe.model)).logits[0, -1]
                  for batch in (encoded, alone)]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


@pytest.mark.slow
def test_peft_model_and_merged_agree(trained_adapter, tiny_af3, merged_pipe):
    peft_model, _ = load_model(tiny_af3, adapter=trained_adapter)
    pipe = pipeline("audio-text-to-text", model=peft_model, processor=load_processor(trained_adapter))
    wave = tone(2.0, 880)
    assert pipe(wave, max_new_tokens=20) == merged_pipe(wave, max_new_tokens=20)


def test_task_is_registered_and_bad_audio_is_clear(micro_af3):
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "audio-text-to-text" in PIPELINE_REGISTRY.get_supported_tasks()
    model, _ = load_model(micro_af3)
    pipe = pipeline("audio-text-to-text", model=model, processor=load_processor(micro_af3))
    with pytest.raises(audiotune.AudioDecodeError, match="NaN"):
        pipe((np.full(1600, np.nan, dtype=np.float32), 16000))
