"""Where each hot path's time goes: generation (the guide's loop vs audiotune's batches), one served request, and
16 concurrent served requests, split into audio decode, resampling, feature extraction, encoder, projector, prefill,
decode steps, detokenisation, HTTP/JSON and waiting in the batcher.

The stages are audiotune's own timers (``audiotune/profiling.py``: exclusive times at the stage boundaries, the
model's stages from forward hooks), so every table adds up to the wall time with an "other" row for what no stage
covers, and says how much the named stages cover. Generation runs in this process over WAV clips (decoded and
resampled by both paths the same way: the decode rows are equal by construction); serving runs ``audiotune serve
--server-timing`` in its own process and reads each answer's ``Server-Timing`` header: the client's wall time less
the server's handler time is the HTTP transport, the client and the ASGI stack.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

TITLE = "## Where the time goes (profile)"
CLIPS, BATCH, MAX_NEW_TOKENS = 64, 16, 24  # bench_generation's workload
MODEL_STAGES = ("chat template + tokenise", "feature extraction", "encoder", "projector", "prefill", "decode steps",
                "generate loop", "detokenisation")  # a batch's stages, in the model's thread
ONE_REQUESTS, CONCURRENT_REQUESTS, CLIENTS = 16, 64, 16


def _wav(clip) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, clip.audio, clip.sampling_rate, format="WAV")
    return buffer.getvalue()


def _guide(model, processor, wavs: list[bytes]) -> None:
    """bench_generation.guide_generate's loop (the guide's step 8) with its stages marked."""
    from audiotune.audio import load_audio
    from audiotune.profiling import DETOKENISE, GENERATE_LOOP, TOKENISE, stage

    for i, wav in enumerate(wavs):
        audio = load_audio(wav, 16000, f"clip {i}")
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Describe the audio."},
                                                     {"type": "audio", "audio": audio}]}]
        with stage(TOKENISE):
            inputs = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)
        with torch.no_grad(), stage(GENERATE_LOOP):
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        with stage(DETOKENISE):
            processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _audiotune(model, processor, family, wavs: list[bytes]) -> None:
    from audiotune.audio import load_audio
    from audiotune.generate import GenerationSettings, examples_from_audio, generate

    audios = [load_audio(wav, family.sampling_rate, f"clip {i}") for i, wav in enumerate(wavs)]
    generate(model, processor, family, examples_from_audio(audios, "Describe the audio."), batch_size=BATCH,
             settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS))


def generation(model_dir: Path) -> dict:
    """The guide's loop, audiotune's default batches and ``--encoder-frames valid``, each profiled once (after a
    warm-up) on bench_generation's clips."""
    from audiotune import profiling
    from audiotune.data.synthetic import make_clip
    from audiotune.models.facts import feature_extractor_of
    from audiotune.models.loading import load_model, load_processor

    window, family = load_model(model_dir, encoder_frames="window")
    valid, _ = load_model(model_dir, encoder_frames="valid")
    processor = load_processor(model_dir)
    for model in (window, valid):
        profiling.instrument(model, family, feature_extractor_of(processor))
    wavs = [_wav(make_clip(i, seed=5)) for i in range(CLIPS)]
    paths = {"guide": lambda w: _guide(window, processor, w),
             "audiotune": lambda w: _audiotune(window, processor, family, w),
             "audiotune (valid frames)": lambda w: _audiotune(valid, processor, family, w)}
    for run in paths.values():
        run(wavs[:2])  # warm-up
    results = {}
    for name, run in paths.items():
        start = time.perf_counter()
        with profiling.collecting() as profile:
            run(wavs)
        results[name] = {"wall": time.perf_counter() - start, "seconds": dict(profile.seconds),
                         "calls": dict(profile.calls)}
    return {"clips": CLIPS, "batch_size": BATCH, "max_new_tokens": MAX_NEW_TOKENS, "paths": results}


def threads(model_dir: Path, repeats: int = 2) -> dict:
    """Milliseconds per decode step at batch 1 and 16 with torch's intra-op threads at 1 and at this machine's
    default, alternated (median of ``repeats``): where other processes share the cores, every parallel region of a
    decode step waits for its slowest thread, and this line shows what that costs here."""
    from audiotune import profiling
    from audiotune.audio import load_audio
    from audiotune.data.synthetic import make_clip
    from audiotune.generate import GenerationSettings, examples_from_audio, generate_batch
    from audiotune.models.facts import feature_extractor_of
    from audiotune.models.loading import load_model, load_processor

    model, family = load_model(model_dir)
    processor = load_processor(model_dir)
    profiling.instrument(model, family, feature_extractor_of(processor))
    audios = [load_audio((c.audio, c.sampling_rate), family.sampling_rate, c.clip_id)
              for c in (make_clip(i, seed=5, max_seconds=6.0) for i in range(16))]
    examples = examples_from_audio(audios, "Describe the audio.")
    default = torch.get_num_threads()
    times: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            for count in sorted({1, default}):
                torch.set_num_threads(count)
                for batch in (1, 16):
                    with profiling.collecting() as profile:
                        generate_batch(model, processor, family, examples[:batch],
                                       GenerationSettings(max_new_tokens=MAX_NEW_TOKENS))
                    step = profile.seconds["decode steps"] / profile.calls["decode steps"]
                    times.setdefault(f"{count} thread{'s' if count > 1 else ''}, batch {batch}", []).append(step)
    finally:
        torch.set_num_threads(default)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def _ask(url: str, body: dict) -> tuple[float, dict[str, float]]:
    """One chat request: the client's wall time and the server's stages (its ``Server-Timing``)."""
    from audiotune.profiling import parse_server_timing

    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    wall = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return wall, parse_server_timing(response.headers["server-timing"])


def _served(url: str, bodies: list[dict], clients: int) -> dict:
    """Mean seconds per request by stage over ``bodies`` sent by ``clients`` concurrent clients; the run's wall."""
    before = httpx.get(f"{url}/health", timeout=10).json()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda body: _ask(url, body), bodies))
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health", timeout=10).json()
    batches = after["batches_run"] - before["batches_run"]
    busy = (after["busy_seconds"] - before["busy_seconds"]) / wall
    seconds: dict[str, float] = {}
    for latency, stages in answers:
        server = stages.pop("total")
        stages["HTTP client + transport + ASGI"] = latency - server
        stages["other (server)"] = server - sum(v for k, v in stages.items() if k != "HTTP client + transport + ASGI")
        for name, value in stages.items():
            seconds[name] = seconds.get(name, 0.0) + value / len(answers)
    latency = statistics.mean(a[0] for a in answers)
    return {"requests": len(bodies), "clients": clients, "wall": wall, "rps": len(bodies) / wall,
            "latency": latency, "seconds": seconds, "batches": batches, "busy": busy}


def serving(model_dir: Path) -> dict:
    """``audiotune serve --server-timing`` (dynamic batching, its defaults): one client, then 16 at once, on clips
    no request repeats."""
    from bench_serving import _bodies, _start

    process, url = _start(model_dir, 16, "--server-timing")
    try:
        for body in _bodies(4, seed=40):  # warm-up
            _ask(url, body)
        one = _served(url, _bodies(ONE_REQUESTS, seed=41), 1)
        many = _served(url, _bodies(CONCURRENT_REQUESTS, seed=42), CLIENTS)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"one request": one, f"{CLIENTS} concurrent requests": many}


def run() -> dict:
    from audiotune.models.tiny import build_tiny

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny("af3", Path(tmp) / "tiny")
        return {"generation": generation(model), "serving": serving(model), "threads": threads(model), "load": load}


def _rows(seconds: dict[str, float], wall: float) -> list[tuple[str, float]]:
    """(stage, seconds) in profiling.STAGES order (any other stage after), then "other": what no stage covers."""
    from audiotune.profiling import STAGES

    names = [s for s in STAGES if s in seconds] + [s for s in seconds if s not in STAGES and not s.startswith("other")]
    rows = [(name, seconds[name]) for name in names]
    return rows + [("other", wall - sum(value for _, value in rows))]


def _coverage(seconds: dict[str, float], wall: float) -> float:
    return 1 - dict(_rows(seconds, wall))["other"] / wall


def section(result: dict) -> list[str]:
    """The profile section of BENCHMARKS.md."""
    gen, srv = result["generation"], result["serving"]
    paths = gen["paths"]
    tables = {name: dict(_rows(run["seconds"], run["wall"])) for name, run in paths.items()}
    names = list(dict.fromkeys(stage for table in tables.values() for stage in table if stage != "other"))
    lines = [
        TITLE,
        "",
        "Stage timers at the boundaries of each hot path (`audiotune/profiling.py`: exclusive times, the model's",
        "stages from forward hooks, off unless a profile collects; `benchmarks/bench_profile.py`). \"other\" is the",
        "wall time no stage covers; \"coverage\" is the named stages' share of the wall time. One-minute load average",
        f"of this shared machine when the profile started: {result['load']:.1f} ({os.cpu_count()} cores).",
        "",
        f"**Generation**, {gen['clips']} WAV clips (bench_generation's), greedy, {gen['max_new_tokens']} new tokens; "
        f"the guide one clip at a time, audiotune in batches of {gen['batch_size']} (sorted by length); both decode "
        "and resample the same way (soundfile + soxr). Seconds for all clips, and each stage's share of the wall time:",
        "",
        "| stage | " + " | ".join(f"{name} (s) | share" for name in paths) + " |",
        "|---|" + "---|---|" * len(paths),
    ]
    for stage in [*names, "other"]:
        cells = [f"{t[stage]:.2f} | {t[stage] / run['wall']:.1%}" if stage in t else "— | —"
                 for t, run in zip(tables.values(), paths.values())]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += [
        "| **wall** | " + " | ".join(f"**{run['wall']:.2f}** | 100%" for run in paths.values()) + " |",
        "",
        "Coverage: " + ", ".join(f"{name} {_coverage(run['seconds'], run['wall']):.1%}" for name, run in paths.items())
        + ". Model forwards: " + "; ".join(f"{name} {run['calls'].get('encoder', 0)} encoder calls, "
                                          f"{run['calls'].get('prefill', 0)} prefills, "
                                          f"{run['calls'].get('decode steps', 0)} decode steps"
                                          for name, run in paths.items()) + ".",
        "",
    ]
    per_clip = ("feature extraction", "encoder", "projector", "prefill")
    work = {name: (sum(run["seconds"].get(k, 0) for k in per_clip), run["seconds"].get("decode steps", 0))
            for name, run in paths.items()}
    lines += [f"Per-clip work ({', '.join(per_clip)}) vs decode steps: " + "; ".join(
        f"{name} {clip:.1f} s ({clip / paths[name]['wall']:.0%}) vs {steps:.1f} s ({steps / paths[name]['wall']:.0%})"
        for name, (clip, steps) in work.items()) + ". Batches divide the decode steps' forwards by the batch size, "
        "not the per-clip work, which is what `--encoder-frames valid` (the encoder) and batched features cut.", ""]
    lines += ["Decode step (ms, median of 2, alternated) by torch's intra-op threads and batch size, 16 clips of "
              "1–6 s: " + ", ".join(f"{name} {ms:.0f}" for name, ms in result["threads"].items()) + ".", ""]
    for name, run in srv.items():
        rows = _rows(run["seconds"], run["latency"])
        lines += [
            f"**Serving, {name}** (`audiotune serve --server-timing`, dynamic batching, max batch 16, 10 ms window; "
            f"{run['requests']} distinct 1–6 s clips, {run['clients']} client{'s' if run['clients'] > 1 else ''}): "
            f"mean milliseconds per request; {run['rps']:.2f} req/s, {run['batches']} batches "
            f"(mean {run['requests'] / max(run['batches'], 1):.1f} requests); the model was busy "
            f"{run['busy']:.0%} of the wall time.",
            "",
            "| stage | ms per request | share of latency |",
            "|---|---|---|",
            *[f"| {stage} | {1000 * value:.0f} | {value / run['latency']:.1%} |" for stage, value in rows],
            f"| **latency** | **{1000 * run['latency']:.0f}** | 100% |",
            "",
            f"Coverage {_coverage(run['seconds'], run['latency']):.1%}. \"HTTP client + transport + ASGI\" is the "
            "client's time less the server's (its `Server-Timing` total); a batch's stages (chat template to "
            "detokenisation) count in full for each of its requests, which each waited for all of it.",
            "",
        ]
        if run["clients"] > 1:
            model = sum(v for k, v in run["seconds"].items() if k in MODEL_STAGES)
            steps = run["seconds"].get("decode steps", 0.0)
            lines += [
                f"Continuous batching (a request joining a running batch at its next decode step) is not built: "
                f"waiting in the batcher is {run['seconds'].get('waiting in the batcher', 0) / run['latency']:.0%} "
                f"of the latency, and with the model busy {run['busy']:.0%} of the wall time it is a queue behind "
                "a saturated model, not idle capacity. Joining would merge part-full batches' decode steps: at "
                f"most half of them (two half batches become one), {steps / model / 2:.0%} of the model's time "
                "here, where a decode step costs the same at any batch size, and nothing of the per-clip work "
                "(features, encoder, prefill), which every request pays in full.",
                "",
            ]
    return lines


if __name__ == "__main__":
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    print(json.dumps(run()))
