"""The demo's orchestration end to end, shortened (the full run is `make demo`), and its grounding helpers."""

from __future__ import annotations

import html
import json

import pytest

from audiotune.demo import DemoSettings, run_demo
from audiotune.errors import ConfigError
from audiotune.grounding import derangement, repeat_summary
from audiotune.metrics import max_ngram_repeats


def test_max_ngram_repeats_counts_loops_not_punctuation():
    assert max_ngram_repeats("hear a beep repeated hear a beep repeated hear a beep") == 3
    assert max_ngram_repeats("A rising sweep followed by a low rumble.") == 1
    assert max_ngram_repeats("A beep, a beep. A BEEP!") == 2  # "a beep a" and "beep a beep" twice each
    assert max_ngram_repeats("two words") == 0
    assert max_ngram_repeats("a b a b a b", n=2) == 3
    assert repeat_summary({"x": "a tone", "y": "a b c a b c a b c"}) == (3, "y")


def test_derangement_moves_every_clip_and_is_fixed_by_its_seed():
    for n in range(2, 25):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
    assert derangement(20, seed=1) == derangement(20, seed=1) != derangement(20, seed=2)
    with pytest.raises(ConfigError, match="at least 2 clips"):
        derangement(1)


@pytest.mark.slow
def test_short_demo_writes_every_artefact(tmp_path):
    stages: list[str] = []
    result = run_demo(DemoSettings(out=str(tmp_path), clips=40, split_fractions=(0.8, 0.1, 0.1), max_steps=6,
                                   per_device_train_batch_size=4, warmup_steps=1, eval_clips=4, max_new_tokens=8),
                      on_stage=stages.append)
    assert stages == ["synthesise data", "build tiny AF3", "fine-tune (LoRA)", "evaluate base vs tuned",
                      "grounding check", "infer (batched)", "merge", "pipeline"]
    for name in ("tuned/adapter_model.safetensors", "merged/model.safetensors", "predictions.jsonl",
                 "metrics.json", "report.md", "report.html", "plots/loss.png", "grounding.json"):
        assert (tmp_path / name).exists(), name
    assert [m.name for m in result.evaluation.models] == ["base", "tuned"]
    assert {"BLEU-4", "METEOR", "CIDEr-D"} <= set(result.base) and {"BLEU-4", "CIDEr-D"} <= set(result.tuned)
    report = (tmp_path / "report.md").read_text()
    assert "| CIDEr-D |" in report and "| base | tuned |" in report and "pipeline output" in report
    assert len(result.samples) == 4
    # The pipeline's answer on the first shown clip is plain transformers' on the merged model (the guide's
    # apply_chat_template and a greedy generate with the demo's settings).
    from transformers import AutoProcessor

    from audiotune.models.loading import load_base_model

    merged, _ = load_base_model(tmp_path / "merged")
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    first = next(e for e in result.evaluation.models[0].predictions if e["id"] == result.samples[0]["id"])
    assert first  # the clip the demo showed is one the evaluation scored
    clip = _first_test_clip(tmp_path, result.samples[0]["id"])
    inputs = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": clip}, {"type": "text", "text": "Describe the audio."}]}], tokenize=True,
        add_generation_prompt=True, return_dict=True, return_tensors="pt")
    defaults = DemoSettings()
    output = merged.generate(**inputs, max_new_tokens=8, do_sample=False,
                             no_repeat_ngram_size=defaults.no_repeat_ngram_size)
    written = output[0, inputs["input_ids"].shape[1]:]
    assert result.pipeline_output == processor.tokenizer.decode(written, skip_special_tokens=True).strip()
    # An empty answer (6 steps teach little) must be the model stopping at once, not an answer lost on the way.
    stops = {processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.eos_token_id}
    assert result.pipeline_output or int(written[0]) in stops
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["model"] for r in rows} == {"base", "tuned"}

    # Grounding: the tuned model's own-audio score is the evaluation's, on the very same references; the
    # swapped run gave every clip another clip's audio and kept the clip's references.
    tuned = {r["id"]: r for r in rows if r["model"] == "tuned"}
    g = result.grounding
    assert g.metric == "CIDEr-D" and g.own == pytest.approx(result.tuned["CIDEr-D"])
    assert g.references == {k: r["references"] for k, r in tuned.items()}
    assert g.own_predictions == {k: r["prediction"] for k, r in tuned.items()}
    assert set(g.other_predictions) == set(tuned) and set(g.pairs) == set(tuned)
    assert sorted(g.pairs.values()) == sorted(tuned) and all(k != v for k, v in g.pairs.items())
    assert g.other == pytest.approx(_cider_d(g.other_predictions, g.references), abs=1e-9)  # pycocoevalcap's own
    assert g.other < g.own or g.own == 0.0  # another clip's audio does not score better than the clip's own
    saved = json.loads((tmp_path / "grounding.json").read_text())
    assert saved["other"] == g.other and saved["pairs"] == g.pairs and saved["references"] == g.references
    assert result.max_repeats == max(max_ngram_repeats(r["prediction"]) for r in tuned.values())
    page = html.unescape((tmp_path / "report.html").read_text())
    for text in (report, page):
        assert f"{g.own:.3f} with each clip's own audio vs {g.other:.3f} with another clip's audio" in text
        assert f"at most {result.max_repeats} occurrence(s) of one 3-gram" in text


def _cider_d(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """CIDEr-D as pycocoevalcap computes it (its PTB tokenizer, then Cider): no audiotune code."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in predictions.items()})
    return Cider().compute_score(gts, res)[0]


def _first_test_clip(out, clip_id: str):
    """The demo's clip ``clip_id`` from the synthetic test split it wrote, decoded as the demo decodes it."""
    from datasets import Audio, load_dataset

    from audiotune.audio import load_audio

    rows = load_dataset("parquet", data_files=str(out / "data" / "data" / "test-*.parquet"), split="train")
    row = next(r for r in rows.cast_column("audio", Audio(decode=False)) if r["youtube_id"] == clip_id)
    return load_audio(row["audio"], 16000, clip_id)
