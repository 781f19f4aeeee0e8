"""Features and the audio tower only as far as a batch's clips reach: the same features, audio tokens and answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiotune.data.collator import ConversationCollator
from audiotune.errors import ConfigError
from audiotune.generate import GenerationSettings, examples_from_audio, generate, prompt_batch
from audiotune.models.families import GLM_ASR, VOXTRAL
from audiotune.models.loading import load_model, load_processor, to_model_inputs
from audiotune.models.tiny import cached_tiny
from tests.conftest import tone

SETTINGS = GenerationSettings(max_new_tokens=8)


def _examples():
    # 1.28 s is 128 mel frames, a multiple of 4: the longest clip's last valid frames read the padding frames past it
    # through the convolutions, which a cut at the clip's own end would replace with the convolutions' zeros.
    return examples_from_audio([tone(1.28, 440), tone(0.3, 880), tone(1.0, 220)], "Describe the audio.")


def test_generation_features_are_the_whisper_numpy_features(micro_af3, micro_processor, family):
    """The features a generation batch computes (Whisper's batched torch STFT, on the collator's device, whole windows
    or cut to the clips' reach) against transformers' own numpy log-mel of each clip padded to its 30 s window, at
    the tolerance transformers' tests hold both paths to (tests/models/whisper/test_feature_extraction_whisper.py:
    test_torch_integration and test_numpy_integration compare with the same values at atol=1e-4)."""
    extractor = micro_processor.feature_extractor
    examples = _examples()
    clips = [a for e in examples for a in e.audios()]
    padded = np.stack([np.pad(c, (0, extractor.n_samples - len(c))) for c in clips])
    reference = torch.from_numpy(extractor._np_extract_fbank_features(padded, "cpu"))

    whole = ConversationCollator(micro_processor, family, training=False, device="cpu")(examples)
    cut = ConversationCollator(micro_processor, family, training=False, device="cpu", encoder_frames="valid")(examples)
    frames = cut["input_features"].shape[-1]
    assert whole["input_features"].shape[-1] == 3000 and frames == 132  # 128 frames + 2 past them, in fours
    assert torch.allclose(whole["input_features"], reference, atol=1e-4)
    assert torch.allclose(cut["input_features"], reference[..., :frames], atol=1e-4)
    assert torch.equal(cut["input_features_mask"], whole["input_features_mask"][:, :frames])
    assert not whole["input_features_mask"][:, frames:].any()
    assert torch.equal(cut["input_ids"], whole["input_ids"])  # the same audio tokens, counted from the same mask
    # The device really reaches the extractor's torch path: nothing computed on "meta" can be copied back.
    with pytest.raises(NotImplementedError, match="meta"):
        ConversationCollator(micro_processor, family, training=False, device="meta")(examples)


@pytest.mark.parametrize("name", ["af3", "musicflamingo", "qwen2audio"])
def test_valid_frames_match_whole_windows(name):
    """``--encoder-frames valid`` on each family whose tower masks the padding: features and the tower over the
    longest clip plus its margin, the same audio tokens, logits equal up to float rounding, the same answers."""
    checkpoint = cached_tiny(name)
    processor = load_processor(checkpoint)
    window, family = load_model(checkpoint, encoder_frames="window")
    valid, _ = load_model(checkpoint, encoder_frames="valid")
    examples = _examples()
    whole = to_model_inputs(ConversationCollator(processor, family, training=False)(examples), window)
    cut = prompt_batch(valid, processor, family, examples)
    seen: list[int] = []
    valid.model.audio_tower.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    with torch.inference_mode():
        logits = window(**whole).logits, valid(**cut).logits
    assert whole["input_features"].shape[-1] == 3000 and seen == [132]
    assert torch.equal(cut["input_ids"], whole["input_ids"])  # every clip keeps the audio tokens the processor counted
    assert torch.allclose(*logits, atol=1e-5)
    assert generate(valid, processor, family, examples, settings=SETTINGS) == \
        generate(window, processor, family, examples, settings=SETTINGS)


def test_a_valid_tower_given_whole_windows_cuts_them(micro_af3, micro_processor, family):
    """Whole-window features handed to a valid-frames model (a notebook's own processor call) are cut by its tower."""
    window, _ = load_model(micro_af3, encoder_frames="window")
    valid, _ = load_model(micro_af3, encoder_frames="valid")
    batch = to_model_inputs(ConversationCollator(micro_processor, family, training=False)(_examples()), window)
    seen: list[int] = []
    valid.model.audio_tower.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    with torch.inference_mode():
        whole = window.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
        cut = valid.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
    assert seen == [132] and cut.shape == whole.shape and torch.allclose(cut, whole, atol=1e-6)


def test_a_model_that_selects_valid_frames_gets_features_only_that_far():
    """Qwen2.5-Omni pads every clip to a 300 s window and then keeps only its valid frames: the features stop at the
    longest clip's reach, with or without the flag, and the answers are plain transformers' over the whole window."""
    checkpoint = cached_tiny("qwen25omni")
    processor = load_processor(checkpoint)
    model, family = load_model(checkpoint)  # whole windows: the default
    examples = _examples()
    texts = ConversationCollator(processor, family, training=False).render(examples)
    whole = to_model_inputs(processor(text=texts, audio=[a for e in examples for a in e.audios()],
                                      text_kwargs={"padding": True, "padding_side": "left"}, return_tensors="pt"),
                            model)
    cut = prompt_batch(model, processor, family, examples)
    assert whole["input_features"].shape[-1] == 30000 and cut["input_features"].shape[-1] == 132
    assert torch.equal(cut["input_ids"], whole["input_ids"])
    with torch.inference_mode():
        assert torch.equal(model.generate(**cut, max_new_tokens=8, do_sample=False),
                           model.generate(**whole, max_new_tokens=8, do_sample=False))


def test_families_whose_tower_attends_over_the_padding_refuse(micro_af3):
    from audiotune.models.encoder_frames import install_valid_frames

    for entry in (GLM_ASR, VOXTRAL):
        with pytest.raises(ConfigError, match=f"{entry.name} family's audio tower attends over the padding"):
            install_valid_frames(torch.nn.Module(), entry)
    with pytest.raises(ConfigError, match="choose window or valid"):
        load_model(micro_af3, encoder_frames="half")
