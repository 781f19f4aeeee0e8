"""Generation throughput: the guide's one-clip-at-a-time ``generate`` vs audiotune's batched path (audio tower over
whole windows and over valid frames), and vLLM's offline engine where `make vllm-env` was run; and the log-mel
features alone, computed each way transformers can (:func:`feature_paths`).

Same tiny AF3 (default preset), same synthetic test clips, same greedy settings, alternated in one process; reports
clips/s medians and ratios, and checks the answers are identical. "audiotune (valid frames, whole-window features)"
is the valid-frames tower fed features over whole 30 s windows: against "audiotune (valid frames)" it shows what
computing features only as far as the batch's clips reach buys, against "audiotune" what the tower's cut buys. With
the demo's run folder present (`make demo`), also scores its tuned adapter's CIDEr-D on the held-out split with whole
windows and valid frames.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


def guide_generate(model, processor, audios, max_new_tokens):
    """The guide's inference loop (step 8): one conversation, apply_chat_template, generate, decode."""
    answers = []
    for audio in audios:
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Describe the audio."},
                                                     {"type": "audio", "audio": audio}]}]
        inputs = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
    return answers


def run(clips: int = 64, batch_size: int = 16, repeats: int = 3, max_new_tokens: int = 24) -> dict:
    from audiotune.data.synthetic import make_clip
    from audiotune.audio import load_audio
    from audiotune.generate import GenerationSettings, examples_from_audio, generate
    from audiotune.models.loading import load_model, load_processor
    from audiotune.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny("af3", Path(tmp) / "tiny")
        window, family = load_model(model_dir, encoder_frames="window")  # the guide's model: plain transformers
        valid, _ = load_model(model_dir, encoder_frames="valid")
        processor = load_processor(model_dir)
        audios = [load_audio((c.audio, c.sampling_rate), 16000, c.clip_id)
                  for c in (make_clip(i, seed=5) for i in range(clips))]
        examples = examples_from_audio(audios, "Describe the audio.")
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        ours = ("audiotune", "audiotune (valid frames, whole-window features)", "audiotune (valid frames)")
        times: dict[str, list[float]] = {k: [] for k in ("guide", *ours, "encoder")}
        answers = {}
        for _ in range(repeats):
            start = time.perf_counter()
            answers["guide"] = guide_generate(window, processor, audios, max_new_tokens)
            times["guide"].append(time.perf_counter() - start)
            for name, model in zip(ours, (window, valid, valid)):
                start = time.perf_counter()
                answers[name] = (whole_window_generate if "whole-window" in name else generate)(
                    model, processor, family, examples, batch_size=batch_size, settings=settings)
                times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            encode_only(window, processor, family, examples, batch_size)
            times["encoder"].append(time.perf_counter() - start)
        vllm = _vllm(model_dir, examples, settings)
        features = feature_paths(audios, processor.feature_extractor, batch_size, repeats)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: clips / seconds[k] for k in ("guide", *ours)}
    if vllm:
        rates["vLLM"] = clips / vllm["generate_seconds"]
    same = {k: f"{sum(a.strip() == b.strip() for a, b in zip(answers['guide'], answers[k]))}/{clips}" for k in ours}
    if vllm:
        same["vLLM"] = f"{sum(a.strip() == b.strip() for a, b in zip(answers['guide'], vllm['answers']))}/{clips}"
    return {"clips": clips, "batch_size": batch_size, "repeats": repeats, "clips_per_s": rates,
            "ratios": {k: v / rates["guide"] for k, v in rates.items() if k != "guide"},
            "ratio": rates["audiotune"] / rates["guide"], "identical_answers": same, "seconds": seconds,
            "encoder_bound": seconds["guide"] / seconds["encoder"], "features": features,
            "vllm_load_seconds": vllm["load_seconds"] if vllm else None, "quality": demo_quality()}


def whole_window_generate(model, processor, family, examples, batch_size, settings):
    """``generate`` with every batch's features computed over whole 30 s windows (a valid-frames model's tower then
    cuts them itself): the generation path as it was before features stopped at the tower's reach."""
    from audiotune.data.collator import ConversationCollator
    from audiotune.generate import audio_length, generate_batch
    from audiotune.models.loading import to_model_inputs

    collate = ConversationCollator(processor, family, training=False)
    order = sorted(range(len(examples)), key=lambda i: audio_length(examples[i]), reverse=True)
    answers = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        inputs = to_model_inputs(collate(chunk), model)
        for i, result in zip(order[start : start + batch_size],
                             generate_batch(model, processor, family, chunk, settings, inputs=inputs)):
            answers[i] = result.text
    return answers


def feature_paths(audios, af3_extractor, batch_size: int, repeats: int) -> dict:
    """The log-mel features of the same clips, clips/s (median of ``repeats``), each way they can be computed.

    AF3 (Whisper's extractor, 30 s windows): transformers' numpy path one clip at a time (what the extractor falls
    back to without torch), its torch path one clip at a time (the guide's processor call per clip), batched over
    whole windows (audiotune's training collator, and generation with whole windows), and batched only as far as
    each batch reaches (``--encoder-frames valid``). Qwen2.5-Omni (the same extractor with 300 s windows, whose
    model keeps only the valid frames): batched over whole windows (its processor's own call) and as far as each
    batch reaches (audiotune's, always). Batches as generation forms them: longest clips first."""
    import numpy as np

    from audiotune.models.encoder_frames import feature_samples
    from audiotune.models.families import AUDIO_FLAMINGO_3, QWEN25_OMNI
    from audiotune.models.loading import load_processor
    from audiotune.models.tiny import cached_tiny

    omni_extractor = load_processor(cached_tiny("qwen25omni")).feature_extractor
    ordered = sorted(audios, key=len, reverse=True)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]

    def batched(extractor, reach=None):
        """``reach``: the family whose rule (``feature_samples``, valid frames) cuts each batch; None: whole windows."""
        for batch in batches:
            span = reach and feature_samples(reach, extractor, [len(a) for a in batch], "valid")
            extractor(batch, sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
                      **({"max_length": span} if span else {}))

    def numpy_each():
        for clip in ordered:
            padded = np.pad(clip, (0, af3_extractor.n_samples - len(clip)))[None]
            af3_extractor._np_extract_fbank_features(padded, "cpu")

    paths = {
        ("AF3", "numpy, one clip at a time"): numpy_each,
        ("AF3", "torch, one clip at a time"): lambda: [af3_extractor([c], sampling_rate=16000, return_tensors="pt")
                                                       for c in ordered],
        ("AF3", "torch, batched, whole windows"): lambda: batched(af3_extractor),
        ("AF3", "torch, batched, as far as the batch reaches"): lambda: batched(af3_extractor, AUDIO_FLAMINGO_3),
        ("Qwen2.5-Omni", "torch, batched, whole windows"): lambda: batched(omni_extractor),
        ("Qwen2.5-Omni", "torch, batched, as far as the batch reaches"): lambda: batched(omni_extractor, QWEN25_OMNI),
    }
    times: dict[tuple[str, str], list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for key, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {"clips": len(audios), "batch_size": batch_size,
            "clips_per_s": {k: len(audios) / statistics.median(v) for k, v in times.items()}}


def _vllm(model_dir, examples, settings) -> dict | None:
    """vLLM's offline engine on the same clips: its generation time (engine start-up reported apart)."""
    from audiotune.errors import ConfigError
    from audiotune.engines import open_engine

    try:
        engine = open_engine("vllm", str(model_dir), batch_size=len(examples))
        answers = engine.generate(examples, settings)
    except ConfigError:
        return None
    engine.close()
    return {"answers": answers, **engine.timings}


def demo_quality(run: Path = Path("runs/demo")) -> dict | None:
    """CIDEr-D of the demo's tuned adapter on its held-out split, audio tower over whole windows vs valid frames."""
    from audiotune.evaluate import EvalConfig, run_evaluation

    if not (run / "tuned" / "adapter_config.json").exists():
        return None
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for frames in ("window", "valid"):
            report = run_evaluation(EvalConfig.from_flat(model=str(run / "tiny-af3"), dataset=str(run / "data"),
                                                         adapters=[str(run / "tuned")], out=f"{tmp}/{frames}",
                                                         split="test", max_new_tokens=40, with_meteor=False,
                                                         encoder_frames=frames))
            scores[frames] = report.models[0].metrics["CIDEr-D"]
            scores[f"{frames} predictions"] = [r["prediction"] for r in report.models[0].predictions]
    same = sum(a == b for a, b in zip(scores.pop("window predictions"), scores.pop("valid predictions")))
    return {**scores, "identical": same, "rows": len(report.models[0].predictions)}


@torch.inference_mode()
def encode_only(model, processor, family, examples, batch_size):
    """The work the guide's path cannot avoid, batched: features, the frozen encoder over full 30 s windows, and
    one forward pass of the language model over each prompt (the prefill), with logits for the last position only.

    The guide's time divided by this is the ratio a batched path could reach if decoding the answer cost nothing.
    """
    from audiotune.data.collator import ConversationCollator
    from audiotune.models.loading import to_model_inputs

    collator = ConversationCollator(processor, family, training=False)
    for start in range(0, len(examples), batch_size):
        batch = to_model_inputs(collator(examples[start : start + batch_size]), model)
        model(**batch, logits_to_keep=1)
