"""Bad audio gets a clear error naming the item; good audio comes out mono float32 at the family rate."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile as sf

from audiotune.audio import AudioLimits, LongAudioPolicy, load_audio
from audiotune.errors import AudioDecodeError, AudioTooLongError


def _wav(wave, rate, fmt="WAV"):
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def test_stereo_8k_is_downmixed_and_resampled():
    t = np.arange(8000) / 8000
    left = 0.5 * np.sin(2 * np.pi * 200 * t)
    out = load_audio(_wav(np.stack([left, left * 0.5], 1), 8000), 16000, "clip-1")
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == 16000
    assert np.abs(out).max() == pytest.approx(0.375, abs=0.02)  # mean of the two channels


def test_eight_channel_96k():
    wave = np.random.default_rng(0).uniform(-0.1, 0.1, (9600, 8))
    out = load_audio(_wav(wave, 96000), 16000, "clip-8ch")
    assert out.shape == (1600,)


def test_flac_and_path_and_dict_forms(tmp_path):
    wave = (0.3 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    path = tmp_path / "a.flac"
    sf.write(path, wave, 16000)
    for item in (str(path), {"bytes": path.read_bytes(), "path": "a.flac"}, {"bytes": None, "path": str(path)},
                 {"array": wave, "sampling_rate": 16000}, (wave, 16000)):
        out = load_audio(item, 16000, "clip")
        assert np.allclose(out, wave, atol=1e-4)


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"this is a text file, not audio\n" * 10, "cannot decode"),
    (np.random.default_rng(1).bytes(4000), "cannot decode"),
])
def test_undecodable_bytes_name_the_item(data, match):
    with pytest.raises(AudioDecodeError, match=rf"clip-7.*{match}"):
        load_audio(data, 16000, "clip-7")


def test_truncated_wav(tmp_path):
    data = _wav(np.zeros(16000), 16000)[:30]
    with pytest.raises(AudioDecodeError, match="clip-t"):
        load_audio(data, 16000, "clip-t")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(AudioDecodeError, match="does not exist"):
        load_audio(str(tmp_path / "missing.wav"), 16000, "row 3")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(str(empty), 16000, "row 4")


def test_nan_samples():
    wave = np.zeros(1000, dtype=np.float32)
    wave[10] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_audio((wave, 16000), 16000, "clip-nan")


def test_long_audio_policies(caplog):
    def warnings():
        found = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
        caplog.clear()
        return found

    caplog.set_level(logging.WARNING, logger="audiotune.audio")
    wave = np.zeros(16000 * 40, dtype=np.float32)
    window = AudioLimits(30.0, 600.0, LongAudioPolicy.WINDOW)
    assert len(load_audio((wave, 16000), 16000, "long", window)) == len(wave)  # windowed, not cut
    assert warnings() == []
    assert len(load_audio((wave, 16000), 16000, "long", AudioLimits(30.0, 35.0, LongAudioPolicy.WINDOW))) == 35 * 16000
    assert warnings() == [("audiotune.audio",
                           "long: 40.0 s is longer than the model's maximum of 35 s; keeping the first 35 s.")]
    cut = load_audio((wave, 16000), 16000, "long", AudioLimits(30.0, 600.0, LongAudioPolicy.TRUNCATE))
    assert len(cut) == 30 * 16000
    assert warnings() == [("audiotune.audio", "long: 40.0 s truncated to the first 30 s window (--long-audio truncate).")]
    for policy in (LongAudioPolicy.SKIP, LongAudioPolicy.ERROR):
        with pytest.raises(AudioTooLongError, match="long: 40.0 s"):
            load_audio((wave, 16000), 16000, "long", AudioLimits(30.0, 600.0, policy))
