"""``pipeline("audio-text-to-text")`` works after ``import audiotune``, for every input form."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from transformers import AudioFlamingo3ForConditionalGeneration, pipeline

import audiotune  # noqa: F401  (registers the task)
from audiotune.merge import merge_adapter
from audiotune.models.loading import load_model, load_processor
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
    resampled = merged_pipe((wave_44k, 44100), **kwargs)
    assert resampled[0]["generated_text"]
    chat = [{"role": "user", "content": [{"type": "audio", "path": str(path)},
                                         {"type": "text", "text": "Describe the audio."}]}]
    assert merged_pipe(chat, **kwargs) == reference
    batch = merged_pipe([wave, wave], **kwargs)
    assert batch == [reference, reference]


@pytest.mark.slow
def test_multi_turn_chat(merged_pipe):
    chat = [
        {"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe the audio."}]},
    ]
    out = merged_pipe(chat, max_new_tokens=12)
    assert isinstance(out[0]["generated_text"], str)


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
