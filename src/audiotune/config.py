"""Configuration: small documented dataclasses that every command composes, one default per fact.

- :class:`DataConfig`: where the rows come from and how a row becomes an example (train, eval, infer's
  long-audio policy, ``data check``);
- :class:`AdapterConfig`: what trains (LoRA/full/QLoRA, targets, projector), shared by ``train`` and ``plan``;
- :class:`GenerationSettings`: how answers are generated (infer, eval, the training callback, serve; one
  ``max_new_tokens`` default);
- :class:`~audiotune.train_config.TrainConfig` *extends* ``transformers.TrainingArguments`` only (TRL's
  ``SFTConfig`` pattern: every Trainer option with its own default and help) and holds those three and the RL
  settings as parts (``cfg.data``, ``cfg.adapter``, ``cfg.generation``, ``cfg.rl``), as TRL composes its configs;
- the other commands' configs (:class:`EvalConfig`, :class:`InferConfig`, :class:`ServeConfig`,
  :class:`DataCheckConfig`) compose the same way: their own fields plus the parts they need (``cfg.data``,
  ``cfg.generation``, ``cfg.engine``: a :class:`BackendConfig`), never by inheriting option groups, so a function
  that needs a part takes the part.

This module is light on purpose (no torch, no transformers): ``audiotune --help`` imports it. ``TrainConfig``
lives in ``train_config.py`` (it needs transformers), which builds on this module and is never imported by it.
Each field's help is its ``metadata["help"]``: the CLI, the web UI's form and ``docs/configuration.md`` read it
from there. A field with a fixed set of values is typed ``Literal[...]``: argparse's ``choices``, the form's dropdown,
the docs and :func:`check_choices`' error for YAML and keyword input all come from that one type. A composed config
holds its parts as fields (:func:`part`); :func:`compose` builds one from flat names (flags, YAML keys,
``from_flat``'s keywords), so each name has one spelling and a retired one gets one error naming its successor.

Defaults reproduce the reference guide's hyper-parameters, except for its two mistakes: LoRA targets the language
model only (``lora_targets`` empty → the family's LM regex) and the loss covers the assistant's tokens only (see
``data/collator.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .answers import ASR_NORMALIZERS
from .errors import ConfigError

LongAudio = Literal["window", "truncate", "skip", "error"]  # audio.LongAudioPolicy's values (audio.py imports numpy)
LONG_AUDIO = typing.get_args(LongAudio)
Backend = Literal["transformers", "vllm"]  # engines.ENGINES' keys, named here without importing torch
BACKENDS = typing.get_args(Backend)
EncoderFrames = Literal["window", "valid"]  # models/encoder_frames.py's modes
EncoderTraining = Literal["none", "lora", "full"]  # models/loading.AdaptationPlan.train_audio_encoder
# tasks.TASKS' names, in its order, named here without importing the tasks package (it imports numpy).
Task = Literal["caption", "asr", "qa", "classify", "mcq", "chat", "preference"]
TASKS = typing.get_args(Task)
# data/shapes.py's SHAPES, named here without importing the data package (this module stays torch-free).
Format = Literal["auto", "webdataset", "audio-flamingo", "chat", "nemo", "lhotse", "clotho", "audiobench", "air-bench",
                 "table"]
FORMATS = typing.get_args(Format)
SkipOrFail = Literal["skip", "fail"]
AsrNormalizer = Literal[tuple(ASR_NORMALIZERS)]  # type: ignore[valid-type]  (answers.py describes each one)


def option(default: Any = None, help: str = "", *, factory: Any = None, **metadata: Any) -> Any:
    """A dataclass field with its help text in ``metadata["help"]`` (what HfArgumentParser, the UI and the docs read)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def part(cls: type, help: str) -> Any:
    """A composed part of a config (``TrainConfig.data``): its fields are options of their own, parsed together with
    the config's (every name is unique across the parts, so flags and YAML keys stay flat)."""
    return field(default_factory=cls, metadata={"help": help, "part": cls})


def flat_fields(cls: type) -> list[dataclasses.Field]:
    """The options of ``cls``: its fields, each part's fields in place of the part, less its retired names."""
    retired = getattr(cls, "RETIRED", {})
    out: list[dataclasses.Field] = []
    for f in dataclasses.fields(cls):
        if f.init and "part" in f.metadata:
            out += flat_fields(f.metadata["part"])
        elif f.init and f.name not in retired:
            out.append(f)
    return out


def parts_of(cls: type) -> list[type]:
    """The part classes ``cls`` composes (none for a plain config)."""
    return [f.metadata["part"] for f in dataclasses.fields(cls) if "part" in f.metadata]


@functools.cache
def flat_hints(cls: type) -> dict[str, Any]:
    """Each option's resolved type (the ``Literal`` of a choice), the parts' included."""
    hints = {name: hint for name, hint in typing.get_type_hints(cls).items()}
    for part_cls in parts_of(cls):
        hints.update(flat_hints(part_cls))
    return hints


def literal_choices(hint: Any) -> tuple | None:
    """The values of a ``Literal`` type, or of ``Optional[Literal]``; None for any other type (``str | Literal[False]``
    takes any string: not a choice)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def check_choices(config: Any) -> None:
    """The one check of every ``Literal`` field: argparse enforces ``choices`` on the command line; this gives YAML,
    the form and keyword arguments the same clear error, listing the choices from the type."""
    hints = flat_hints(type(config))
    for f in dataclasses.fields(config):
        if "part" in f.metadata:  # a part set after construction (the UI's) is checked too
            check_choices(getattr(config, f.name))
            continue
        choices = literal_choices(hints.get(f.name))
        value = getattr(config, f.name)
        if choices and value not in choices and not (value is None and type(None) in typing.get_args(hints[f.name])):
            raise ConfigError(f"--{flag(f.name)} {value!r}: choose one of {', '.join(map(str, choices))}.")


COMMAND_LINE = "command line"  # where a name came from: flags, not a file's keys


def flag(name: str) -> str:
    return name.replace("_", "-")


def retired_error(old: str, new: str, where: str, kind: str = "key") -> ConfigError:
    """The one error for a retired name, in the form the user wrote it: a flag, or a key (keyword) of ``where``."""
    if where == COMMAND_LINE:
        return ConfigError(f"--{flag(old)} was renamed --{flag(new)}.")
    return ConfigError(f"{where}: {kind} {old!r} was renamed {new!r}.")


def check_names(cls: type, names: Any, where: str, kind: str = "key") -> None:
    """Every name is an option of ``cls``: a retired one names its successor, an unknown one its nearest matches."""
    retired = getattr(cls, "RETIRED", {})
    for name in names:
        if name in retired:
            raise retired_error(name, retired[name], where, kind)
    known = [f.name for f in flat_fields(cls)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        near = sorted({m for name in unknown for m in difflib.get_close_matches(name, known, n=3)})
        raise ConfigError(f"{where}: unknown {kind}s {unknown}" + (f"; did you mean {near}?" if near else
                                                                   f". Known: {', '.join(sorted(known))}."))


def compose(cls: type, values: dict[str, Any], where: str, kind: str = "key") -> Any:
    """``cls`` built from flat option names (flags, YAML keys, the form's names, keywords): each name goes to the part
    that declares it (:func:`check_names` first)."""
    check_names(cls, values, where, kind)
    top = dict(values)
    for f in dataclasses.fields(cls):
        if f.init and "part" in f.metadata:
            own = {g.name for g in flat_fields(f.metadata["part"])}
            top[f.name] = f.metadata["part"](**{name: top.pop(name) for name in values if name in own})
    return cls(**top)


def from_flat_names(cls: type, **values: Any) -> Any:
    """``cls`` from flat option names, as its flags and YAML keys spell them (``EvalConfig.from_flat(dataset=...,
    max_new_tokens=8, backend="vllm")``): the one keyword entry point of every composed command config, so Python
    callers need not know which part declares an option. An unknown name is a ConfigError naming its nearest."""
    return compose(cls, values, cls.__name__, "keyword")


def replace_flat(config: Any, **changes: Any) -> Any:
    """A copy of the composed ``config`` with ``changes`` by flat name, each routed to its part: what
    ``dataclasses.replace`` does for a flat dataclass (it only knows the parts' names, not their options')."""
    return compose(type(config), {**flat_values(config), **changes}, type(config).__name__, "keyword")


def flat_values(config: Any) -> dict[str, Any]:
    """``compose``'s inverse: every option's current value by its flat name (the parts' fields in place of the part)."""
    retired = getattr(type(config), "RETIRED", {})
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.init and "part" in f.metadata:
            values.update(flat_values(getattr(config, f.name)))
        elif f.init and f.name not in retired:
            values[f.name] = getattr(config, f.name)
    return values


@dataclass
class DataConfig:
    """The dataset and how its rows become examples."""

    dataset: str = option("", "Hub id, local folder (parquet, arrow, audiofolder, webdataset .tar shards) or "
                              "parquet/jsonl/json/csv/tar files.")
    dataset_config: str | None = option(None, "The Hub dataset's configuration (load_dataset's name), e.g. "
                                              "librispeech_test_clean.")
    format: Format = option("auto", "How a row lays out an example (auto: detected from the columns; "
                                    "docs/data-formats.md).")
    audio_dir: str | None = option(None, "Folder relative audio paths are resolved against (empty: the manifest's "
                                         "folder).")
    task: Task = option("caption", "What a row holds and what the model answers (preference: the pairs --method dpo "
                                   "reads).")
    prompt: str | None = option(None, "The user's instruction (empty: the task's default, e.g. 'Describe the audio.').")
    system_prompt: str | None = option(None, "A system message before every conversation.")
    audio_column: str | None = option(None, "Audio column (empty: auto-detected: audio, audio_path, path, file_name...).")
    text_column: str | None = option(None, "Answer column (empty: auto-detected per task: caption/text, transcript, "
                                           "answer, label).")
    references_column: str | None = option(None, "All references of a clip (empty: the task's default, captions for "
                                                 "caption).")
    question_column: str | None = option(None, "qa/mcq: the question column (empty: auto-detected).")
    choices_column: str | None = option(None, "mcq: the choices column (empty: auto-detected, choices/options).")
    choice_format: str = option("({letter}) {choice}", "mcq: how each choice is listed in the prompt ({letter} "
                                                       "{choice}); lmms-eval's MMAU prompt lists '{letter}. {choice}'.")
    rejected_column: str | None = option(None, "dpo: the rejected answer (empty: auto-detected, rejected/...).")
    labels: list[str] | None = option(None, "classify: the label set, comma-separated (empty: read from the dataset).")
    id_column: str | None = option(None, "Clip id; rows sharing it are one clip with several references.")
    streaming: bool = option(False, "Stream the dataset instead of downloading/reading it whole.")
    long_audio: LongAudio = option("window", "Clips longer than the family's window: cut into windows, truncated, "
                                             "skipped, or an error.")
    on_bad_sample: SkipOrFail = option("skip", "A row whose audio or text is unusable is skipped and listed, or stops "
                                               "the run.")

    def __post_init__(self) -> None:
        self.labels = split_commas(self.labels)
        check_choices(self)


@dataclass
class AdapterConfig:
    """What trains: LoRA on the language model by default, or the whole LM, or LoRA on a 4-bit LM."""

    full: bool = option(False, "Full fine-tuning of the language model instead of LoRA.")
    qlora: bool = option(False, "4-bit NF4 language model + LoRA (CUDA, bitsandbytes).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling numerator (alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch.")
    lora_targets: list[str] | None = option(None, "Module names (comma-separated) or one regex (empty: the language "
                                                  "model's linear layers).")
    train_projector: bool = option(False, "Also train the audio projector (the encoder stays frozen).")
    train_audio_encoder: EncoderTraining = option("none", "Adapt the audio encoder too: none (frozen), lora (LoRA on "
                                                          "its attention and MLP linears) or full (the whole tower, "
                                                          "saved with the adapter). For a new language, accent or "
                                                          "sound type the frozen features do not hear.")
    encoder_learning_rate: float | None = option(None, "The audio encoder's learning rate (empty: --learning-rate).")
    projector_learning_rate: float | None = option(None, "The projector's learning rate (empty: --learning-rate).")

    def __post_init__(self) -> None:
        self.lora_targets = parse_targets(self.lora_targets)
        check_choices(self)

    @property
    def adapter_mode(self) -> str:
        return "qlora" if self.qlora else "full" if self.full else "lora"

    def validate_adapter(self) -> None:
        if self.qlora and self.full:
            raise ConfigError("--qlora and --full exclude each other: QLoRA trains LoRA matrices on a 4-bit base.")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1 (got {self.lora_r}).")
        if self.full and self.train_audio_encoder == "lora":
            raise ConfigError("--full trains the language model's weights themselves; with it, train the encoder "
                              "fully too (--train-audio-encoder full) or not at all.")


@dataclass
class GenerationSettings:
    """How answers are generated: greedy by default (reproducible scores)."""

    max_new_tokens: int = option(64, "Most new tokens per answer.")
    do_sample: bool = option(False, "Sample instead of greedy decoding (uses --temperature and --top-p).")
    temperature: float = option(1.0, "Sampling temperature (with --do-sample, and of GRPO's completions).")
    top_p: float = option(1.0, "Nucleus sampling (with --do-sample, and of GRPO's completions).")
    num_beams: int = option(1, "Beam search width (1: none).")
    repetition_penalty: float = option(1.0, "transformers' repetition penalty (1: none).")
    no_repeat_ngram_size: int = option(0, "> 0: no n-gram of that size twice in an answer.")

    def as_kwargs(self) -> dict[str, Any]:
        """``generate()`` keywords; sampling knobs only when sampling, and no n-gram rule when off."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationSettings)}
        if not self.do_sample:
            kwargs.pop("temperature")
            kwargs.pop("top_p")
        if not self.no_repeat_ngram_size:
            kwargs.pop("no_repeat_ngram_size")  # off: the recorded settings stay as they were
        return kwargs


# The help of every --vllm-python (engines here, GRPO's rollout server in rl/config.py).
VLLM_PYTHON_HELP = "Interpreter with vLLM (default: $AUDIOTUNE_VLLM_PYTHON, ./.venv-vllm, or this one)."


@dataclass
class BackendConfig:
    """Which engine generates, shared by ``infer``, ``eval`` and ``serve`` (whose vLLM engine is vLLM's own server)."""

    backend: Backend = option("transformers", "transformers (this process) or vllm (vLLM's offline engine in its "
                                              "own environment, `make vllm-env`).")
    vllm_python: str | None = option(None, VLLM_PYTHON_HELP)
    encoder_frames: EncoderFrames = option("window", "window: features and the audio tower over whole 30 s windows "
                                                     "(the checkpoint's own answers); valid: only as far as each "
                                                     "batch's clips reach (faster, equal up to float rounding; "
                                                     "families whose tower masks the padding, valid_frames \"masked\" "
                                                     "in `audiotune models --json`; see models/encoder_frames.py).")


# The parts the command configs compose (each declared once; TrainConfig's data and generation parts are the same).
_DATA_HELP = "The dataset and how its rows become examples."
_ENGINE_HELP = "Which engine generates (--backend) and how."


@dataclass
class InferConfig:
    """``audiotune infer FILES``: answer a prompt for each audio file (the files are the command's arguments).
    Composed of ``generation`` and ``engine``; flags and YAML keys stay flat (:meth:`from_flat`)."""

    model: str = option("", "Hub id or local checkpoint (base or merged).")
    adapter: str | None = option(None, "LoRA adapter folder.")
    prompt: str = option("Describe the audio.", "The instruction for every file.")
    system_prompt: str | None = option(None, "A system message before the instruction.")
    batch_size: int = option(16, "Files per generation batch.")
    jsonl: str | None = option(None, "Also write one JSON line per file here (an 'error' record for a bad file).")
    on_bad_file: SkipOrFail = option("skip", "Answer the good files, list the bad ones, exit 1; or stop at the first "
                                             "bad file.")
    generation: GenerationSettings = part(GenerationSettings, "How each file's answer is generated.")
    engine: BackendConfig = part(BackendConfig, _ENGINE_HELP)

    from_flat = classmethod(from_flat_names)

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class ServeConfig:
    """``audiotune serve``: an OpenAI-compatible server. Its ``generation`` part is what a request that does not set
    its own gets (``max_tokens``, ``temperature``, ``top_p``): greedy and ``max_new_tokens`` long, as infer and eval;
    its ``engine`` part says which engine answers. Flags and YAML keys stay flat (:meth:`from_flat`).

    ``max_request_mb`` and ``adapters`` as ``NAME=PATH`` items are the CLI's forms; the code reads
    :attr:`max_request_bytes` and :attr:`adapter_paths`.
    """

    model: str = option("", "Base model (Hub id or folder) or a merged checkpoint.")
    adapters: list[str] = option(help="NAME=PATH of a LoRA adapter, served as model NAME; repeatable.", factory=list,
                                 aliases=["--adapter"])
    host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
    port: int = option(8000, "Port.")
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY'. Visible to every user in `ps`: prefer "
                                       "--api-key-file or $AUDIOTUNE_API_KEY.")
    api_key_file: str | None = option(None, "Read the required API key from this file (default: $AUDIOTUNE_API_KEY, "
                                            "if set).")
    served_name: str | None = option(None, "Model name of the base (default: its folder name).")
    max_batch_size: int = option(16, "Most requests generated together (vLLM: --max-num-seqs).")
    max_wait_ms: float = option(10.0, "How long a request waits for others to share its batch.")
    max_request_mb: float = option(25.0, "Largest request body (and fetched audio_url) in MB; larger ones get 413.")
    max_audio_seconds: float | None = option(None, "Longest audio a request may send (empty: the family's window).")
    max_tokens: int = option(1024, "Largest max_tokens a request may ask for (a request without one gets "
                                   "--max-new-tokens, at most this).")
    allow_remote_audio: bool = option(False, "Fetch audio_url parts from http(s) URLs (data: URLs always work); "
                                             "addresses inside the network (loopback, private, link-local) are "
                                             "refused.")
    remote_audio_allow_hosts: list[str] = option(help="Hosts remote audio may come from even where they resolve "
                                                      "inside the network (e.g. an internal file server); with "
                                                      "--backend vllm, the only hosts vLLM fetches from.",
                                                 factory=list)
    allow_text_only: bool = option(False, "Accept requests without audio (the model's text-only path).")
    server_timing: bool = option(False, "Answer each (non-streamed) chat request with a Server-Timing header: its "
                                        "time in audio decode, resampling, waiting in the batcher, feature "
                                        "extraction, encoder, prefill, decode steps, ... (benchmarks/bench_profile.py"
                                        " reads it).")
    device: str | None = option(None, "Device for the model (empty: CUDA when available, else the CPU).")
    vllm_args: list[str] = option(help="--backend vllm: more arguments for vLLM's server, as one string each.",
                                  factory=list)
    generation: GenerationSettings = part(GenerationSettings, "What a request that sets no generation options gets.")
    engine: BackendConfig = part(BackendConfig, _ENGINE_HELP)

    from_flat = classmethod(from_flat_names)

    def __post_init__(self) -> None:
        self.remote_audio_allow_hosts = split_commas(self.remote_audio_allow_hosts) or []
        if isinstance(self.adapters, dict):  # the API's form: {name: path}
            self.adapters = [f"{name}={path}" for name, path in self.adapters.items()]

    @property
    def adapter_paths(self) -> dict[str, str]:
        """``{served name: folder}`` from the ``NAME=PATH`` items."""
        paths: dict[str, str] = {}
        for item in self.adapters:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--adapter {item!r}: use NAME=PATH (the name requests ask for, the adapter folder).")
            if name in paths:
                raise ConfigError(f"--adapter {name}: given twice; each served name needs its own.")
            paths[name] = path
        return paths

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def request_default_tokens(self) -> int:
        """What a request without ``max_tokens`` may write: ``max_new_tokens``, within the server's limit."""
        return min(self.generation.max_new_tokens, self.max_tokens)

    def validate(self) -> "ServeConfig":
        require_given(self.model)
        check_choices(self)
        if self.max_tokens < 1 or self.generation.max_new_tokens < 1:
            raise ConfigError("--max-tokens and --max-new-tokens must be at least 1.")
        if self.generation.num_beams != 1:
            raise ConfigError("--num-beams: the server samples or decodes greedily per request; beam search is for "
                              "infer and eval.")
        if self.engine.backend == "vllm" and self.allow_remote_audio and not self.remote_audio_allow_hosts:
            raise ConfigError("--allow-remote-audio with --backend vllm: vLLM fetches audio URLs itself and cannot "
                              "refuse addresses inside the network; name the hosts it may fetch from with "
                              "--remote-audio-allow-hosts HOST[,HOST].")
        if self.engine.backend == "vllm" and self.server_timing:
            raise ConfigError("--server-timing times audiotune's own server (--backend transformers); vLLM's server "
                              "has its own metrics at /metrics.")
        self.adapter_paths  # noqa: B018  (NAME=PATH checked before the model loads)
        return self


@dataclass
class DataCheckConfig:
    """``audiotune data check``: every row decoded and built as training would, before a model is rented. Composed
    of ``data`` (what training would read); flags and YAML keys stay flat (:meth:`from_flat`)."""

    split: str = option("train", "The split to check.")
    model: str | None = option(None, "Model whose family and tokenizer count the tokens (empty: --family's audio "
                                     "arithmetic only).")
    family: str = option("af3", "Family for the audio token arithmetic when no --model.")
    data: DataConfig = part(DataConfig, _DATA_HELP)

    from_flat = classmethod(from_flat_names)


@dataclass
class EvalConfig:
    """``audiotune eval``: generate over a split with one or more models and score them on the same rows. Composed
    of ``data``, ``generation`` and ``engine``; flags, YAML keys and ``metrics.json``'s config stay flat
    (:meth:`from_flat`, :func:`flat_values`)."""

    benchmark: str | None = option(None, "A benchmark preset (`audiotune benchmarks` lists them): its Hub copy, "
                                         "split, columns, prompt and scoring as the field runs it; --dataset points "
                                         "it at a local copy in the same layout.")
    benchmarks: list[str] | None = option(None, "Several presets in one run (comma-separated), each in its own "
                                                "folder under --out, and the regression view: every model on every "
                                                "benchmark, each difference from the base with its noise "
                                                "(--dataset: a folder with a copy of each, named after it).")
    model: str = option("", "Base model: Hub id or local checkpoint.")
    adapters: list[str] = option(help="Adapter folders or merged checkpoints (several: scored side by side).",
                                 factory=list, aliases=["--adapter"])
    compare: bool = option(False, "Also score the base model, side by side.")
    out: str = option("runs/eval", "Folder for predictions.jsonl, metrics.json and the report.")
    split: str = option("test", "The split to score.")
    take: int | None = option(None, "Score only the first N rows.")
    batch_size: int = option(16, "Clips per generation batch.")
    spice_models: str | None = option(None, "Folder with SPICE's Stanford CoreNLP 3.6.0 jars.")
    with_meteor: bool = option(True, "Also compute METEOR (needs Java).")
    asr_normalizer: AsrNormalizer = option("whisper", "asr: the text normalisation WER compares after: whisper "
                                                      "(Whisper's English normaliser, as lmms-eval), whisper-basic "
                                                      "(other languages) or simple (lower case, no punctuation).")
    audio_players: int = option(5, "Clips with audio players in the HTML report.")
    training_run: str | None = option(None, "A training run folder whose curves go into the report (default: the "
                                            "first adapter that is a run folder).")
    resume: bool = option(False, "Continue an interrupted evaluation in --out from the answers it saved (refused "
                                 "when the models, rows, prompts or generation settings differ).")
    data: DataConfig = part(DataConfig, _DATA_HELP)
    generation: GenerationSettings = part(GenerationSettings, "How each model's answers are generated.")
    engine: BackendConfig = part(BackendConfig, _ENGINE_HELP)

    from_flat = classmethod(from_flat_names)

    def __post_init__(self) -> None:
        self.benchmarks = split_commas(self.benchmarks)  # --benchmarks a,b,c as the README writes it
        check_choices(self)

    def validate(self) -> "EvalConfig":
        require_given(self.model, self.data.dataset, needs_dataset=True)
        check_choices(self)  # also after construction: a field set since (the UI's) is checked too
        return self


def require_given(model: str | None, dataset: str | None = None, *, needs_dataset: bool = False) -> None:
    """The one message for a missing ``--model`` (every command) or ``--dataset`` (train, eval)."""
    if not model:
        raise ConfigError("No model given: pass --model (a Hub id or a local checkpoint folder).")
    if needs_dataset and not dataset:
        raise ConfigError("No dataset given: pass --dataset (a Hub id, a local folder or parquet files).")


def split_commas(value: Any) -> list[str] | None:
    """A list from ``a,b`` or ``["a,b"]`` or ``["a", "b"]`` (the CLI's old comma form and the new one agree)."""
    if value is None or value == []:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()] or None


def parse_targets(value: Any) -> list[str] | str | None:
    """``lora_targets``: a regex when it has regex characters, else module names (comma-separated or a list)."""
    if not value:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        if any(c in value for c in "*.|()\\"):
            return value
        return split_commas(value)
    return list(value)


def plain(value: Any) -> Any:
    """A YAML-safe copy of a field value (enums by their value, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # transformers' AcceleratorConfig
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def read_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """The keys of a YAML config file for the dataclass ``cls`` (flat, as its flags); a retired or unknown key is
    named (:func:`check_names`) before anything runs."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path}: expected a mapping of option names to values.")
    check_names(cls, data, str(path))
    return data

