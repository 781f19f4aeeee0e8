"""Decode any audio item to a mono float32 waveform at the model family's rate, or say why not.

Why our own decoder rather than ``datasets``' ``Audio(sampling_rate=...)`` cast: we need to name the
row when a file is corrupt (``datasets`` raises deep inside its iterator and the run dies), to apply
a policy to long audio instead of the processor's silent truncation, and soundfile + soxr decode and
resample WAV/FLAC faster than the generic ffmpeg path. ffmpeg (through torchcodec) remains the
fallback for containers soundfile cannot read (m4a, opus, webm, ...).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioDecodeError, AudioTooLongError
from .profiling import AUDIO_DECODE, RESAMPLE, stage

logger = logging.getLogger(__name__)


class LongAudioPolicy(str, Enum):
    """What to do with audio longer than the model accepts.

    ``window``: pass up to the family's maximum (AF3: 10 min, processed in 30 s windows), cut
    beyond it with a warning naming the clip. ``truncate``: keep the first window only, with a
    warning. ``skip``: treat the clip as a bad sample. ``error``: raise.
    """

    WINDOW = "window"
    TRUNCATE = "truncate"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class AudioLimits:
    """The window and the maximum length (seconds) of a model family, and the policy beyond them."""

    window_seconds: float
    max_seconds: float
    policy: LongAudioPolicy = LongAudioPolicy.WINDOW


def _wav_shortfall(data: bytes) -> tuple[int, int] | None:
    """(declared, present) audio bytes when a RIFF/WAVE file is cut short, else ``None``.

    libsndfile decodes a truncated WAV without complaint (it reads what is there), which would pair a
    clipped clip with a caption of the whole. Sizes of 0 or 0xFFFFFFFF (streamed writers) are accepted.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if chunk == b"data":
            present = len(data) - position - 8
            if size not in (0, 0xFFFFFFFF) and present < 0.99 * size:
                return size, present
            return None
        position += 8 + size + (size & 1)
    return (1, 0) if position > len(data) else None


def _too_long(name: str, seconds: float, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(f"{name}: audio is {seconds:.1f} s; at most {max_seconds:g} s are accepted.", seconds)


def _read_capped(data: bytes, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """soundfile's decode, refused from the header when the clip is longer than ``max_seconds`` and never decoding
    more than that (plus a second) when the header states no length or a wrong one: a 1 MB FLAC of two hours of
    silence must not cost the gigabytes its samples would."""
    with sf.SoundFile(io.BytesIO(data)) as handle:
        rate = int(handle.samplerate)
        if max_seconds is None:
            return handle.read(dtype="float32", always_2d=True), rate
        if handle.frames > 0 and handle.frames / rate > max_seconds:
            raise _too_long(name, handle.frames / rate, max_seconds)
        wave = handle.read(int((max_seconds + 1) * rate), dtype="float32", always_2d=True)
    if wave.shape[0] / rate > max_seconds:
        raise _too_long(name, wave.shape[0] / rate, max_seconds)
    return wave, rate


def _decode_bytes(data: bytes, name: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    if not data:
        raise AudioDecodeError(f"{name}: the audio is empty (0 bytes). Remove the row or replace the file.")
    shortfall = _wav_shortfall(data)
    if shortfall:
        raise AudioDecodeError(f"{name}: truncated WAV: the header declares {shortfall[0]} bytes of audio but the "
                               f"file holds {shortfall[1]}. Re-export or re-download the file, or drop the row.")
    try:
        return _read_capped(data, name, max_seconds)
    except AudioTooLongError:
        raise
    except Exception as sf_error:  # soundfile cannot read this container: try ffmpeg.
        try:
            return _decode_with_torchcodec(data, name, max_seconds)
        except AudioTooLongError:
            raise
        except Exception as ff_error:
            raise AudioDecodeError(
                f"{name}: cannot decode audio ({len(data)} bytes; soundfile: {_reason(sf_error)}; "
                f"ffmpeg: {_reason(ff_error)}). The file is corrupt or not audio: re-export it "
                "(e.g. `ffmpeg -i IN -ar 16000 OUT.wav`) or drop the row."
            ) from ff_error


def _reason(error: Exception) -> str:
    """The decoder's own last words, without object reprs and C++ source locations."""
    text = str(error).strip().rstrip(".")
    return text.rsplit(": ", 1)[-1].rsplit(", ", 1)[-1] or type(error).__name__


def _decode_with_torchcodec(source: bytes | str, name: str = "audio",
                            max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """ffmpeg's decode; with ``max_seconds``, refused from the container's stated duration and capped like
    :func:`_read_capped`."""
    from torchcodec.decoders import AudioDecoder

    decoder = AudioDecoder(source)
    if max_seconds is None:
        samples = decoder.get_all_samples()
    else:
        stated = getattr(decoder.metadata, "duration_seconds_from_header", None)
        if stated is not None and stated > max_seconds:
            raise _too_long(name, float(stated), max_seconds)
        samples = decoder.get_samples_played_in_range(0.0, max_seconds + 1.0)
    wave = samples.data.numpy().T.astype(np.float32, copy=False)  # (channels, n) -> (n, channels)
    if max_seconds is not None and wave.shape[0] / samples.sample_rate > max_seconds:
        raise _too_long(name, wave.shape[0] / samples.sample_rate, max_seconds)
    return wave, int(samples.sample_rate)


def _decode_path(path: str, name: str) -> tuple[np.ndarray, int]:
    p = Path(path)
    if not p.exists():
        raise AudioDecodeError(f"{name}: audio file {path} does not exist. Fix the path (relative paths are "
                               "resolved against the manifest's folder) or drop the row.")
    if p.is_dir():
        raise AudioDecodeError(f"{name}: {path} is a folder, not an audio file. Pass the files inside it.")
    if p.stat().st_size == 0:
        raise AudioDecodeError(f"{name}: audio file {path} is empty (0 bytes). Replace the file or drop the row.")
    try:
        data = p.read_bytes()
    except OSError as error:
        raise AudioDecodeError(f"{name}: cannot read {path}: {error.strerror or error}. Check its permissions.") from None
    return _decode_bytes(data, name if name == str(path) else f"{name} ({path})")


def decode_any(item: Any, name: str, default_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``item`` into ``(samples × channels float32, rate)``.

    Accepts what users and datasets hand over: raw bytes, a path, ``{"bytes", "path"}`` (datasets'
    undecoded ``Audio``), ``{"array", "sampling_rate"}`` (decoded), ``(array, rate)``, a torchcodec
    ``AudioDecoder``, or a bare array at ``default_rate``.
    """
    if isinstance(item, (bytes, bytearray)):
        return _decode_bytes(bytes(item), name)
    if isinstance(item, (str, Path)):
        return _decode_path(str(item), name)
    if isinstance(item, tuple) and len(item) == 2:
        return _as_2d(np.asarray(item[0]), name), int(item[1])
    if isinstance(item, dict):
        if item.get("offset") is not None or item.get("duration") is not None:
            return _decode_segment(item, name)
        if item.get("array") is not None:
            return _as_2d(np.asarray(item["array"]), name), int(item["sampling_rate"])
        if item.get("bytes"):
            return _decode_bytes(item["bytes"], f"{name} ({item.get('path') or 'embedded bytes'})")
        if item.get("path"):
            return _decode_path(item["path"], name)
        raise AudioDecodeError(f"{name}: the audio cell holds neither bytes, a path nor an array: {sorted(item)}.")
    if hasattr(item, "get_all_samples"):
        samples = item.get_all_samples()
        return samples.data.numpy().T.astype(np.float32), int(samples.sample_rate)
    if isinstance(item, np.ndarray) or hasattr(item, "numpy"):
        if default_rate is None:
            raise AudioDecodeError(f"{name}: a bare array needs its sampling rate; pass (array, rate).")
        array = item.numpy() if hasattr(item, "numpy") else item
        return _as_2d(np.asarray(array), name), default_rate
    raise AudioDecodeError(f"{name}: unsupported audio value of type {type(item).__name__}.")


# How far a segment may end past the file (manifests round durations; NeMo writes 2-3 decimals).
SEGMENT_TOLERANCE_S = 0.05


def _decode_segment(item: dict[str, Any], name: str) -> tuple[np.ndarray, int]:
    """``{"path" | "bytes", "offset", "duration"}``: the segment only, as NeMo reads it (``offset`` s in, ``duration`` s
    long; ``duration`` absent: to the end). Seeks with soundfile where it can, so a 2 s segment of an hour-long file
    decodes 2 s; other containers decode whole and are cut. A segment starting at or past the end of the file, or
    ending past it, is an error: pairing a transcript with the wrong audio would be silent."""
    offset = float(item.get("offset") or 0.0)
    duration = item.get("duration")
    duration = None if duration is None else float(duration)
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioDecodeError(f"{name}: offset {offset} s / duration {duration} s: the offset must be >= 0 and the "
                               "duration > 0. Fix the manifest row.")
    data, path = item.get("bytes"), item.get("path")
    if not data and not path:
        raise AudioDecodeError(f"{name}: a segment (offset/duration) needs a file path or bytes.")
    where = path or "the clip"
    if not data:
        seeked = _read_segment(path, offset, duration, name)
        if seeked is not None:
            return seeked
        wave, rate = _decode_path(path, name)  # existence and emptiness checked there
    else:
        wave, rate = _decode_bytes(data, name)
    total = wave.shape[0] / rate
    _check_segment(offset, duration, total, where, name)
    start, stop = _segment_frames(offset, duration, rate, wave.shape[0])
    return wave[start:stop], rate


def _segment_frames(offset: float, duration: float | None, rate: int, frames: int) -> tuple[int, int]:
    start = int(round(offset * rate))
    return start, frames if duration is None else min(frames, start + int(round(duration * rate)))


def _check_segment(offset: float, duration: float | None, total: float, where: str, name: str) -> None:
    if offset >= total:
        raise AudioDecodeError(f"{name}: offset {offset:.3f} s is past the end of {where} ({total:.3f} s long). Fix the "
                               "row's offset or its audio path.")
    if duration is not None and offset + duration > total + SEGMENT_TOLERANCE_S:
        raise AudioDecodeError(f"{name}: the segment {offset:.3f}-{offset + duration:.3f} s ends past the end of "
                               f"{where} ({total:.3f} s long). Fix the row's offset/duration or its audio path.")


def _read_segment(path: str, offset: float, duration: float | None, name: str) -> tuple[np.ndarray, int] | None:
    """The segment read by seeking (soundfile's formats); ``None`` where soundfile cannot open the file."""
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None  # _decode_path names the problem
    try:
        handle = sf.SoundFile(path)
    except Exception:
        return None
    with handle:
        rate, frames = int(handle.samplerate), int(handle.frames)
        _check_segment(offset, duration, frames / rate, path, name)
        start, stop = _segment_frames(offset, duration, rate, frames)
        handle.seek(start)
        return handle.read(stop - start, dtype="float32", always_2d=True), rate


def _as_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim == 2:
        # Accept (channels, n) as well as (n, channels): channels are the short side.
        return array.T if array.shape[0] < array.shape[1] and array.shape[0] <= 8 else array
    raise AudioDecodeError(f"{name}: audio array has {array.ndim} dimensions; expected 1 (mono) or 2.")


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels: the audio encoders we support all take one channel."""
    return wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return wave
    return soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(item: Any, target_rate: int, name: str, limits: AudioLimits | None = None,
               max_seconds: float | None = None) -> np.ndarray:
    """Decode, downmix, resample and validate one audio item; return mono float32 at ``target_rate``.

    Raises :class:`AudioDecodeError` for empty, corrupt or non-finite audio and
    :class:`AudioTooLongError` when the long-audio policy says so. ``max_seconds`` (encoded bytes, e.g. a server's
    request) refuses a longer clip from its header, before its samples are decoded.
    """
    with stage(AUDIO_DECODE):
        if max_seconds is not None and isinstance(item, (bytes, bytearray)):
            wave, rate = _decode_bytes(bytes(item), name, max_seconds)
        else:
            wave, rate = decode_any(item, name, default_rate=target_rate)
        if wave.shape[0] == 0:
            raise AudioDecodeError(f"{name}: the audio has no samples. Drop the row or replace the file.")
        if not np.isfinite(wave).all():
            bad = int((~np.isfinite(wave)).sum())
            raise AudioDecodeError(f"{name}: the audio holds {bad} NaN/Inf samples. Re-export the file or drop the "
                                   "row.")
    with stage(RESAMPLE):
        mono = resample(to_mono(wave), rate, target_rate)
    return apply_length_policy(mono, target_rate, name, limits) if limits else mono


def length_outcome(seconds: float, name: str, limits: AudioLimits) -> tuple[float, str | None]:
    """(seconds kept, what happened) under the long-audio policy; ``None`` when the clip is kept whole.

    Raises :class:`AudioTooLongError` where the policy refuses the clip. ``audiotune data check``
    reports these outcomes without decoding twice.
    """
    policy = LongAudioPolicy(limits.policy)
    if policy is LongAudioPolicy.WINDOW:
        if seconds > limits.max_seconds:
            return limits.max_seconds, (f"{name}: {seconds:.1f} s is longer than the model's maximum of "
                                        f"{limits.max_seconds:.0f} s; keeping the first {limits.max_seconds:.0f} s.")
        return seconds, None
    if seconds <= limits.window_seconds:
        return seconds, None
    if policy is LongAudioPolicy.TRUNCATE:
        return limits.window_seconds, (f"{name}: {seconds:.1f} s truncated to the first "
                                       f"{limits.window_seconds:.0f} s window (--long-audio truncate).")
    raise AudioTooLongError(
        f"{name}: {seconds:.1f} s is longer than one {limits.window_seconds:.0f} s window "
        f"(--long-audio {policy.value}). Use --long-audio window to process it in windows "
        f"(up to {limits.max_seconds:.0f} s), or truncate."
    )


def apply_length_policy(wave: np.ndarray, rate: int, name: str, limits: AudioLimits) -> np.ndarray:
    kept, message = length_outcome(len(wave) / rate, name, limits)
    if message is None:
        return wave
    logger.warning(message)
    return wave[: int(kept * rate)]


def base64_bytes(text: Any, name: str) -> bytes:
    """The bytes of base64 audio (a data file's part, a request's ``input_audio``), or a clear error naming it."""
    import base64
    import binascii

    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise AudioDecodeError(f"{name} is not valid base64.") from None


def data_uri_bytes(uri: str, name: str) -> bytes:
    """The bytes of a ``data:audio/...;base64,...`` URI."""
    header, _, payload = uri.partition(",")
    if ";base64" not in header:
        raise AudioDecodeError(f"{name}: data URIs must be base64 encoded (data:audio/wav;base64,...).")
    return base64_bytes(payload, name)


def encode_audio(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """The clip as a file in memory (``subtype="FLOAT"`` keeps a float32 waveform exactly)."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()
