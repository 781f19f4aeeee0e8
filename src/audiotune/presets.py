"""Benchmark presets: the evaluation sets the field reports, loaded, prompted and scored the way its harnesses do.

Why presets: "how does my model do on MMAU, comparable with published numbers?" needs the published copy's layout,
the prompt the field sends and its scoring rule, and each is easy to get subtly wrong (MMAU's choices are a JSON
string, its answer is the choice text; LibriSpeech's reference column is ``gt``). A preset states them once, with
the harness file each comes from, and ``audiotune eval --benchmark NAME`` fills the evaluation from it; any option
given on the command line wins. ``--dataset`` points a preset at a local copy in the published layout (the Hub's
parquet shards, ``<split>-00000-of-0000N.parquet`` anywhere below the folder; a copy holding a single split uses
that one).

Sources: EvolvingLMMs-Lab/lmms-eval at 75571cfe (``lmms_eval/tasks/<name>/``), AudioLLMs/AudioBench at e991641d,
the Clotho v2.1 release (zenodo 4783391) and QwenLM/Qwen-Audio ``eval_audio/evaluate_caption.py`` (0b0e882e).
docs/evaluation.md says, per preset, where audiotune's strict number differs from a harness's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import flat_values, replace_flat
from .errors import ConfigError

LMMS_EVAL = "EvolvingLMMs-Lab/lmms-eval@75571cfe lmms_eval/tasks"
MMAU_POST = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Benchmark:
    """One published evaluation set: where it is, how its rows read, what the model is asked, how it is scored."""

    name: str
    summary: str
    hub_id: str | None  # None: no Hub copy the field uses; --dataset must point at the release's files
    split: str
    task: str
    prompt: str
    source: str  # the harness file (or release) the layout, prompt and scoring come from
    dataset_config: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # EvalConfig options the layout needs (columns, format…)
    max_new_tokens: int = 128
    breakdown: tuple[str, ...] = ()  # row columns the metrics are also reported by
    # classify: lmms-eval's reading of an answer, (keyword, label) in its order: the first keyword found wins
    harness_keywords: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "hub_id": self.hub_id, "config": self.dataset_config,
                "split": self.split, "task": self.task, "breakdown": list(self.breakdown), "source": self.source}


_MMAU = dict(hub_id="lmms-lab-audio/mmau", task="mcq", prompt="{question}\n{choices}" + MMAU_POST,
             source=f"{LMMS_EVAL}/mmau (_default_template_yaml, utils.py)", breakdown=("task", "difficulty"),
             options={"choice_format": "{letter}. {choice}", "id_column": "id"})
_AIR = dict(hub_id="lmms-lab/AIR_Bench", dataset_config="Foundation", task="mcq", max_new_tokens=256,
            prompt="{question}\n{choices}\n" + MMAU_POST, breakdown=("task_name",),
            source=f"{LMMS_EVAL}/air_bench (air_bench_foundation_*.yaml, utils.py)",
            options={"format": "air-bench", "choice_format": "{letter}. {choice}"})
_LIBRISPEECH = dict(hub_id="lmms-lab-audio/librispeech", task="asr", max_new_tokens=256,
                    prompt="Please recognize the speech and only output the recognized content:",
                    source=f"{LMMS_EVAL}/librispeech (librispeech_test_*.yaml, utils.py)",
                    options={"text_column": "gt", "asr_normalizer": "whisper"})

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mmau-test-mini", "MMAU test-mini: 1,000 sound/music/speech multiple-choice questions",
              split="test_mini", **_MMAU),
    Benchmark("mmau-test", "MMAU test: 9,000 questions (answers are withheld upstream: scored only where the copy "
              "holds them)", split="test", **_MMAU),
    Benchmark("mmar", "MMAR: 1,000 deep-reasoning multiple-choice questions over sound, music and speech",
              hub_id="ngqtrung/mmar", split="test", task="mcq",
              prompt="Listen to the audio and answer the following multiple-choice question. Respond with only the "
                     "letter (A, B, C, or D) of the correct option.\n{question}\n{choices}\nThe best answer is:",
              source=f"{LMMS_EVAL}/mmar (mmar.yaml, utils.py)", breakdown=("category", "modality"),
              options={"choice_format": "{letter}. {choice}", "id_column": "id"}),
    Benchmark("clotho-aqa", "Clotho-AQA test (filtered): one-word answers to questions about a sound",
              hub_id="lmms-lab-audio/ClothoAQA", dataset_config="clotho_aqa", split="clotho_aqa_test_filtered",
              task="qa", prompt="{question}\nAnswer the question using a single word only. ", max_new_tokens=8,
              source=f"{LMMS_EVAL}/clotho_aqa (clotho_aqa_test.yaml, utils.py)",
              options={"text_column": "answer", "question_column": "question"}),
    Benchmark("air-bench-foundation-sound", "AIR-Bench Foundation, sound questions", split="sound", **_AIR),
    Benchmark("air-bench-foundation-music", "AIR-Bench Foundation, music questions", split="music", **_AIR),
    Benchmark("air-bench-foundation-speech", "AIR-Bench Foundation, speech questions", split="speech", **_AIR),
    Benchmark("librispeech-test-clean", "LibriSpeech test-clean: 2,620 read English utterances",
              dataset_config="librispeech_test_clean", split="librispeech_test_clean", **_LIBRISPEECH),
    Benchmark("librispeech-test-other", "LibriSpeech test-other: 2,939 harder read English utterances",
              dataset_config="librispeech_test_other", split="librispeech_test_other", **_LIBRISPEECH),
    Benchmark("audiocaps-test", "AudioCaps test as AudioBench publishes it (context, instruction, answer)",
              hub_id="AudioLLMs/audiocaps_test", split="test", task="caption",
              prompt="Could you help me create an audio caption for the provided clip?",
              source="AudioLLMs/AudioBench@e991641d src/dataset_src/audiocaps_test.py (the first of its five "
                     "instructions, fixed; it draws one at random)",
              options={"format": "audiobench", "text_column": "answer"}),
    Benchmark("clotho-v2-eval", "Clotho v2.1 evaluation split: 1,045 clips, five captions each (the release's CSV "
              "and audio folder)", hub_id=None, split="evaluation", task="caption", prompt="Describe the audio.",
              max_new_tokens=30,
              source="Clotho v2.1 (zenodo 4783391: clotho_captions_evaluation.csv, clotho_audio_evaluation); "
                     "metrics as QwenLM/Qwen-Audio@0b0e882e eval_audio/evaluate_caption.py",
              options={"format": "clotho"}),
    Benchmark("vocalsound-test", "VocalSound test: laughter, sniff, throat clearing, cough, sigh or sneeze",
              hub_id="lmms-lab-audio/vocalsound", split="test", task="classify",
              prompt="Classify the human vocal sound to VocalSound in English: ", max_new_tokens=128,
              source=f"{LMMS_EVAL}/vocalsound (vocalsound_test.yaml, utils.py)", breakdown=("age_group",),
              options={"text_column": "answer",
                       "labels": ["Laughter", "Sniff", "Throat clearing", "Cough", "Sigh", "Sneeze"]},
              harness_keywords=(("laughter", "Laughter"), ("sniff", "Sniff"), ("throat", "Throat clearing"),
                                ("cough", "Cough"), ("sigh", "Sigh"), ("sneeze", "Sneeze"))),
)}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ConfigError(f"--benchmark {name!r}: no such preset. `audiotune benchmarks` lists them: "
                          f"{', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name]


def apply_benchmark(cfg: Any, defaults: Any) -> Any:
    """``cfg`` (an EvalConfig) with its preset's settings wherever the user kept ``defaults``' value (a flag given on
    the command line wins), and a local ``--dataset`` folder resolved to the preset split's files. A preset names
    options flat, as flags do; :func:`~audiotune.config.replace_flat` routes each to the part that declares it."""
    bench = benchmark(cfg.benchmark)
    preset: dict[str, Any] = {"split": bench.split, "task": bench.task, "prompt": bench.prompt,
                              "max_new_tokens": bench.max_new_tokens, "dataset_config": bench.dataset_config,
                              **bench.options}
    given, kept = flat_values(cfg), flat_values(defaults)
    changes = {k: v for k, v in preset.items() if given[k] == kept[k]}
    dataset = given["dataset"] or bench.hub_id
    if not dataset:
        raise ConfigError(f"--benchmark {bench.name}: it has no Hub copy; pass --dataset with the release's files "
                          f"({bench.source}).")
    if given["dataset"] and Path(given["dataset"]).is_dir():
        folder = Path(given["dataset"])
        if changes.get("format", given["format"]) == "clotho":  # the release: the captions CSV and the audio folder
            dataset, audio_dir = clotho_release(folder, changes.get("split", given["split"]))
            if given["audio_dir"] is None:
                changes["audio_dir"] = audio_dir
        else:
            dataset, split = local_split(folder, changes.get("split", given["split"]))
            changes.update(split=split, dataset_config=None)
    return replace_flat(cfg, **changes, dataset=dataset)


def clotho_release(folder: Path, split: str) -> tuple[str, str]:
    """(the captions CSV, the audio folder) of an unpacked Clotho release: ``clotho_captions_<split>.csv`` and the
    ``<split>`` folder its audio archive unpacks to (zenodo 4783391)."""
    captions = folder / f"clotho_captions_{split}.csv"
    if not captions.exists():
        raise ConfigError(f"{folder}: no clotho_captions_{split}.csv. Unpack the Clotho release there (its "
                          f"captions CSV and clotho_audio_{split}.7z).")
    audio = folder / split
    return str(captions), str(audio if audio.is_dir() else folder)


def local_split(folder: Path, split: str) -> tuple[str, str]:
    """(a glob of ``split``'s parquet shards below ``folder``, the split): as the Hub stores a dataset
    (``data/<split>-00000-of-00001.parquet``, or ``<config>/<split>-….parquet``); a copy holding one split uses it."""
    shards = sorted(folder.rglob("*.parquet"))
    splits = sorted({p.name.split("-0")[0] for p in shards})
    if split not in splits:
        if len(splits) != 1:
            raise ConfigError(f"{folder}: no parquet shards of split {split!r} ({split}-00000-of-….parquet); the "
                              f"splits there are {splits or 'none'}. Pass --split, or point --dataset at the copy.")
        split = splits[0]
    files = [p for p in shards if p.name.split("-0")[0] == split]
    if len({p.parent for p in files}) != 1:
        raise ConfigError(f"{folder}: split {split!r} has shards in several folders; point --dataset at one.")
    return str(files[0].parent / f"{split}-*.parquet"), split
