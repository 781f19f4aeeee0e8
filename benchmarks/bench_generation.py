"""Generation throughput: the guide's one-clip-at-a-time ``generate`` vs audiotune's batched path.

Same tiny AF3 (default preset), same synthetic test clips, same greedy settings, alternated A/B
in one process; reports clips/s medians and the ratio. Also checks the answers are identical.
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
        model, family = load_model(model_dir)
        processor = load_processor(model_dir)
        audios = [load_audio((c.audio, c.sampling_rate), 16000, c.clip_id)
                  for c in (make_clip(i, seed=5) for i in range(clips))]
        examples = examples_from_audio(audios, "Describe the audio.")
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        times = {"guide": [], "audiotune": [], "encoder": []}
        answers = {}
        for _ in range(repeats):
            start = time.perf_counter()
            answers["guide"] = guide_generate(model, processor, audios, max_new_tokens)
            times["guide"].append(time.perf_counter() - start)
            start = time.perf_counter()
            answers["audiotune"] = generate(model, processor, family, examples, batch_size=batch_size,
                                            settings=settings)
            times["audiotune"].append(time.perf_counter() - start)
            start = time.perf_counter()
            encode_only(model, processor, family, examples, batch_size)
            times["encoder"].append(time.perf_counter() - start)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: clips / seconds[k] for k in ("guide", "audiotune")}
    same = sum(a.strip() == b.strip() for a, b in zip(answers["guide"], answers["audiotune"]))
    return {"clips": clips, "batch_size": batch_size, "repeats": repeats, "clips_per_s": rates,
            "ratio": rates["audiotune"] / rates["guide"], "identical_answers": f"{same}/{clips}",
            "seconds": seconds, "encoder_bound": seconds["guide"] / seconds["encoder"]}


@torch.inference_mode()
def encode_only(model, processor, family, examples, batch_size):
    """The work no generation strategy avoids, batched: features, the frozen encoder over full 30 s windows, and
    one forward pass of the language model over each prompt (the prefill), with logits for the last position only.

    The guide's time divided by this is the ratio a batched path could reach if decoding the answer cost nothing.
    """
    from audiotune.data.collator import ConversationCollator
    from audiotune.models.loading import to_model_inputs

    collator = ConversationCollator(processor, family, training=False)
    for start in range(0, len(examples), batch_size):
        batch = to_model_inputs(collator(examples[start : start + batch_size]), model)
        model(**batch, logits_to_keep=1)
