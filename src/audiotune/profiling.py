"""Where a request's time goes: stage timers at the boundaries of the hot paths, off unless a profile collects.

Why timers and not ``torch.profiler`` alone: half of a request's time is not torch's (base64 and WAV decoding, soxr's
resampling, numpy feature extraction, the tokenizer, HTTP and JSON, waiting in the batcher), and the numbers must add
up to the wall time a client sees. Library code marks a stage with ``with stage(RESAMPLE):``; with no profile
collecting that is one ``ContextVar`` read, so the marks stay in the code for good. A profile collects in the
current context (:func:`collecting`): a benchmark, or one served request under ``--server-timing`` (its answer then
carries a ``Server-Timing`` header). Worker threads started with the context (``asyncio.to_thread``) record into the
same profile; a dynamic batch runs under a profile of its own, added to each of its requests'.

Stages nest and each records its exclusive time (its own less the stages inside it), so a profile's stages add up to
the time spent inside its outermost stages, and ``wall - sum`` is what no stage covers (a table's "other" row). The
model's own stages (encoder, projector, prefill, decode steps) come from forward hooks that :func:`instrument`
registers on a loaded model (torch's hook API; nothing in transformers is patched), and feature extraction from the
processor's feature extractor made an instance of a subclass with a timed ``__call__`` (:func:`time_calls`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

AUDIO_DECODE = "audio decode"  # base64 and the container (WAV/FLAC/...) to samples
RESAMPLE = "resample"  # downmix and resample to the family's rate
FEATURES = "feature extraction"  # the processor's feature extractor (log-mel)
TOKENISE = "chat template + tokenise"  # rendering and tokenising the prompt, the processor's own bookkeeping
ENCODER = "encoder"  # the audio tower's forward
PROJECTOR = "projector"  # the projector's forward
PREFILL = "prefill"  # the model's first forward over the whole prompt (less the encoder and projector in it)
DECODE_STEPS = "decode steps"  # the model's forwards of one new token per row
GENERATE_LOOP = "generate loop"  # generate's own work between the forwards (logits processors, stopping, the cache)
DETOKENISE = "detokenisation"  # token ids to text (streamed pieces too)
HTTP = "HTTP/JSON"  # the server's body read, JSON parsing and response rendering
BATCHER_WAIT = "waiting in the batcher"  # from the queue to the start of the request's batch
STAGES = (HTTP, AUDIO_DECODE, RESAMPLE, BATCHER_WAIT, TOKENISE, FEATURES, ENCODER, PROJECTOR, PREFILL, DECODE_STEPS,
          GENERATE_LOOP, DETOKENISE)


class Profile:
    """Seconds and calls per stage; safe to add to from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls[name] = self.calls.get(name, 0) + calls

    def merge(self, other: "Profile", scale: float = 1.0) -> None:
        """Add ``other``'s stages (times ``scale``) to this one's."""
        for name, seconds in list(other.seconds.items()):
            self.add(name, seconds * scale, other.calls.get(name, 0))

    def total(self) -> float:
        return sum(self.seconds.values())

    def server_timing(self, total: float | None = None) -> str:
        """The stages as an HTTP ``Server-Timing`` value (milliseconds; W3C Server Timing), ``total`` last."""
        entries = [f'{name.replace(" ", "-").replace("/", "-").replace("+", "and")};dur={1000 * seconds:.3f};'
                   f'desc="{name}"' for name, seconds in self.seconds.items()]
        if total is not None:
            entries.append(f"total;dur={1000 * total:.3f}")
        return ", ".join(entries)


def parse_server_timing(header: str) -> dict[str, float]:
    """A ``Server-Timing`` value written by :meth:`Profile.server_timing` → seconds by stage (``total`` included)."""
    seconds: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in header.split(","))):
        fields = dict(part.strip().partition("=")[::2] for part in entry.split(";")[1:])
        name = fields.get("desc", "").strip('"') or entry.split(";", 1)[0]
        seconds[name] = float(fields.get("dur", 0)) / 1000
    return seconds


class _Frame:
    __slots__ = ("name", "profile", "parent", "start", "children", "token")

    def __init__(self, name: str, profile: Profile, parent: "_Frame | None") -> None:
        self.name, self.profile, self.parent, self.children = name, profile, parent, 0.0
        self.token = None
        self.start = 0.0


_profile: ContextVar[Profile | None] = ContextVar("audiotune_profile", default=None)
_frame: ContextVar[_Frame | None] = ContextVar("audiotune_profile_frame", default=None)


def current() -> Profile | None:
    """The profile collecting in this context, if any."""
    return _profile.get()


def begin(name: str) -> _Frame | None:
    """Open stage ``name`` (``None`` when nothing collects); close it with :func:`end` in the same context."""
    profile = _profile.get()
    if profile is None:
        return None
    frame = _Frame(name, profile, _frame.get())
    frame.token = _frame.set(frame)
    frame.start = time.perf_counter()
    return frame


def end(frame: _Frame | None) -> None:
    if frame is None:
        return
    elapsed = time.perf_counter() - frame.start
    _frame.reset(frame.token)
    frame.profile.add(frame.name, elapsed - frame.children)
    if frame.parent is not None and frame.parent.profile is frame.profile:
        frame.parent.children += elapsed


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of the collecting profile (nothing when none collects)."""
    frame = begin(name)
    try:
        yield
    finally:
        end(frame)


@contextlib.contextmanager
def collecting(profile: Profile | None = None) -> Iterator[Profile]:
    """Collect the stages timed in this context (and in threads started with it) into ``profile`` (a new one)."""
    profile = profile if profile is not None else Profile()
    token, frame_token = _profile.set(profile), _frame.set(None)
    try:
        yield profile
    finally:
        _frame.reset(frame_token)
        _profile.reset(token)


def time_calls(obj: Any, name: str) -> Callable[[], None]:
    """Time every call of ``obj`` (a feature extractor) as stage ``name``; returns a function that undoes it.

    ``obj`` becomes an instance of a subclass of its class whose ``__call__`` is timed (the same name, the wrapped
    signature: code that inspects it, or checks the class, sees what it saw), so every holder of it is timed."""
    cls = type(obj)
    if getattr(cls, "_audiotune_timed", None) == name:  # timed already (two models sharing one processor)
        return lambda: None
    call = cls.__call__

    @functools.wraps(call)
    def timed(self, *args, **kwargs):
        with stage(name):
            return call(self, *args, **kwargs)

    obj.__class__ = type(cls.__name__, (cls,), {"__call__": timed, "__module__": cls.__module__,
                                                "__qualname__": cls.__qualname__, "_audiotune_timed": name})
    return lambda: setattr(obj, "__class__", cls)


def instrument(model, family, extractor: Any = None) -> Callable[[], None]:
    """Time ``model``'s encoder, projector, prefill and decode steps, and the calls of ``extractor`` (the processor's
    feature extractor, ``models.facts.feature_extractor_of``) as feature extraction, in the profile collecting
    wherever they run; returns a function that removes the instrumentation.

    Costs a few microseconds per forward while nothing collects: for benchmarks and ``--server-timing``, not for
    every run. The outer model's forward is the prefill when it sees more than one new position, else a decode step;
    the encoder and projector run inside the prefill and are subtracted from it (nested stages).
    """
    modules = dict(model.named_modules())
    outer = next((m for m in modules.values() if type(m).__name__ == family.model_class), model)
    tower = next((m for name, m in modules.items() if family.audio_tower_attribute
                  and name.split(".")[-1] == family.audio_tower_attribute), None)
    projectors = [m for name, m in modules.items() if name and family.is_projector_module(name)
                  and not family.is_projector_module(name.rsplit(".", 1)[0])]
    handles = []

    def timed(module, name_of: Callable[[tuple, dict], str]) -> None:
        frames: list[_Frame | None] = []  # a stack: a module may run inside itself (never here, but cheap)

        def before(_module, args, kwargs):
            frames.append(begin(name_of(args, kwargs)) if _profile.get() is not None else None)

        def after(_module, args, kwargs, output):
            if frames:
                end(frames.pop())

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True, always_call=True))

    def step(args: tuple, kwargs: dict) -> str:
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds", args[0] if args else None)
        return PREFILL if ids is None or ids.shape[1] > 1 else DECODE_STEPS

    timed(outer, step)
    if tower is not None:
        timed(tower, lambda args, kwargs: ENCODER)
    for projector in projectors:
        timed(projector, lambda args, kwargs: PROJECTOR)
    untime = time_calls(extractor, FEATURES) if extractor is not None else (lambda: None)

    def remove() -> None:
        for handle in handles:
            handle.remove()
        untime()

    return remove


def table(profile: Profile, wall: float, per: int = 1) -> list[tuple[str, float, float]]:
    """(stage, seconds per ``per``, share of ``wall``) for every stage in :data:`STAGES` order (others after), then
    ``other``: the part of ``wall`` no stage covers (negative where stages overlap, e.g. threads)."""
    names = [s for s in STAGES if s in profile.seconds] + [s for s in profile.seconds if s not in STAGES]
    rows = [(name, profile.seconds[name] / per, profile.seconds[name] / wall) for name in names]
    other = wall - profile.total()
    return rows + [("other", other / per, other / wall)]
