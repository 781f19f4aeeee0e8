"""The one interface every generation backend implements, and the request a served chat becomes.

Why an interface: ``infer``, ``eval``, ``serve`` and the web UI's playground all need the same thing (answers for a
batch of conversations, from a base model or one of its adapters, with given generation settings) and used to
switch on a backend string each in its own way. Each now holds an :class:`Engine`; which one is chosen in one place
(:func:`audiotune.engines.open_engine`), and adding a backend is one module that subclasses this one.

An engine is built for one checkpoint and its family, resolved once by the caller (:func:`load_family`) and handed
in, so a command reads the checkpoint's config, processor and chat template once however many parts need them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..config import GenerationSettings
from ..conversation import Example
from ..errors import ConfigError
from ..generate import Generation
from ..models.family import Family


@dataclass
class GenerationRequest:
    """One conversation with its own sampling settings (a served chat request, a playground turn)."""

    example: Example
    model: str  # the engine's model name: the base or an adapter
    max_tokens: int
    temperature: float | None = None  # None: the engine's generation settings; 0: greedy
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature == 0

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` call: those for the same model (base or adapter)."""
        return (self.model,)


@dataclass
class Sample:
    """One sampled completion (a GRPO rollout's): its token ids, the stop token included when the model stopped
    (a policy-gradient loss learns to stop), whether it stopped, and its text as the model wrote it. A sampler in
    another process also says what it sampled from: each token's log-probability there (``logprobs``) and the
    weights' name (``model``, e.g. the adapter of an optimizer step)."""

    tokens: list[int]
    stopped: bool
    text: str
    logprobs: list[float] | None = None
    model: str | None = None

    @classmethod
    def from_tokens(cls, tokens: list[int], stop_ids: Sequence[int], tokenizer, **extra) -> "Sample":
        """A completion as its sampler returned it: cut after its first stop token (kept), its text decoded without
        special tokens; every sampler reads its tokens this one way. ``extra``: ``logprobs`` (cut the same way)
        and ``model``."""
        stop = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
        end = len(tokens) if stop is None else stop + 1
        if extra.get("logprobs") is not None:
            extra["logprobs"] = list(extra["logprobs"][:end])
        text = tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
        return cls(list(tokens[:end]), stop is not None, text, **extra)


ONE_ADAPTER = "adapter"  # the name infer and eval give the single adapter they open an engine with


class Engine(ABC):
    """Answers conversations for one checkpoint: its base model and the adapters it was opened with, by name.

    ``backend`` is the name ``--backend`` takes. ``family`` is the checkpoint's bound family. ``base_name`` is the
    name that selects the base model (adapters disabled); every other name in :meth:`model_names` is an adapter.
    """

    backend: ClassVar[str]
    family: Family
    base_name: str
    adapters: dict[str, str]
    # How many rows one generate() call should get when a caller saves answers as it goes (eval): small enough
    # that an interruption loses little, large enough that a call's fixed cost (starting vLLM) stays small.
    rows_per_call: int

    def model_names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    def check_model(self, name: str | None) -> str:
        """``name`` (None: the base) if this engine has it, else one error listing what it has."""
        name = self.base_name if name is None else name
        if name not in self.model_names():
            raise ConfigError(f"model {name!r} is not loaded; loaded: {', '.join(self.model_names())}.")
        return name

    @abstractmethod
    def generate(self, examples: Sequence[Example], settings: GenerationSettings, *, model: str | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[str]:
        """Answers for ``examples`` in their order, from ``model`` (None: the base); ``on_batch(n)`` after each
        batch of ``n`` (a progress bar)."""

    def run(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answers for requests that each carry their own sampling and may stream (``on_text``): what a server's
        dynamic batcher and the playground need. Requests share one :meth:`GenerationRequest.batch_key`."""
        raise ConfigError(f"the {self.backend} engine answers whole batches only (no per-request sampling or "
                          "streaming here); use --backend transformers, or serve with vLLM's own server.")

    def sample(self, examples: Sequence[Example], *, max_tokens: int, temperature: float, top_p: float,
               suppress_tokens: Sequence[int] | None = None, inputs: dict | None = None,
               seeds: Sequence[int] | None = None) -> list[Sample]:
        """One sampled completion per example from the base model (GRPO repeats each prompt for its group).
        ``inputs``: the examples already collated for this engine's model (GRPO needs them for its log-probs too),
        so they are not collated twice; an engine that cannot use them ignores them. ``seeds``: one per example,
        each row's own random stream, so a completion does not depend on which rows share its batch."""
        raise ConfigError(f"the {self.backend} engine cannot sample rollouts yet; use the transformers engine.")

    def close(self) -> None:
        """Release what the engine holds (a model's memory, a child process)."""
