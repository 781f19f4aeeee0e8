"""Batched generation gives what one-at-a-time generation gives (greedy), in the input order."""

from __future__ import annotations

import pytest

from audiotune.generate import GenerationSettings, examples_from_audio, generate
from audiotune.models.loading import load_model, load_processor
from tests.conftest import tone


@pytest.mark.slow
def test_batched_equals_one_at_a_time(tiny_af3, trained_adapter, family):
    model, _ = load_model(tiny_af3, adapter=trained_adapter)
    processor = load_processor(trained_adapter)
    audios = [tone(s, f) for s, f in ((1.0, 220), (2.7, 880), (1.6, 440), (3.0, 1300), (1.2, 300), (2.2, 600))]
    examples = examples_from_audio(audios, "Describe the audio.")
    settings = GenerationSettings(max_new_tokens=24)
    batched = generate(model, processor, family, examples, batch_size=4, settings=settings)
    single = [generate(model, processor, family, [e], batch_size=1, settings=settings)[0] for e in examples]
    assert batched == single
    # Each answer is what plain transformers writes for that clip: the guide's apply_chat_template and a greedy
    # model.generate, decoded without special tokens (no audiotune code on this side).
    for audio, answer in zip(audios, batched):
        conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                     {"type": "text", "text": "Describe the audio."}]}]
        inputs = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                               return_dict=True, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answer == expected.strip()
    assert all(batched)  # non-empty answers: the comparison above is not between two empty strings
    assert "<|im_end|>" not in " ".join(batched)
