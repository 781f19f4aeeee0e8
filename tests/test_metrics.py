"""Caption metrics equal pycocoevalcap's own pipeline, with hand-checkable edge cases."""

from __future__ import annotations

import pytest

from audiotune.metrics import caption_metrics, ptb_tokenize

PREDICTIONS = {"a": "A dog barks twice.", "b": "A high-pitched whistle, then silence.", "c": "Rain falls on a roof."}
REFERENCES = {
    "a": ["A dog barks two times.", "Two barks from a dog.", "A dog is barking."],
    "b": ["A shrill whistle followed by a pause.", "A high whistle and then silence."],
    "c": ["Heavy rain falls on a metal roof.", "Rain hitting a roof.", "Water drips.", "Rainfall."],
}


def _reference_scores():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDICTIONS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"BLEU-1": bleu[0], "BLEU-4": bleu[3], "METEOR": Meteor().compute_score(gts, res)[0],
            "ROUGE-L": Rouge().compute_score(gts, res)[0], "CIDEr-D": Cider().compute_score(gts, res)[0]}


@pytest.mark.slow
def test_equal_to_pycocoevalcap():
    ours, per_clip = caption_metrics(PREDICTIONS, REFERENCES)
    for name, value in _reference_scores().items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert set(per_clip) == set(PREDICTIONS) and all("CIDEr-D" in v for v in per_clip.values())


def test_identical_caption_scores_bleu1_of_one():
    refs = {"x": ["a dog barks twice", "a dog barks twice"], "y": ["rain on a roof", "rain on a roof"]}
    metrics, _ = caption_metrics({"x": "A dog barks twice.", "y": "Rain on a roof."}, refs, with_meteor=False)
    assert metrics["BLEU-1"] == pytest.approx(1.0)
    assert metrics["ROUGE-L"] == pytest.approx(1.0)


def test_empty_prediction_does_not_crash_and_scores_zero():
    metrics, per_clip = caption_metrics({"x": "", "y": "rain on a roof"},
                                        {"x": ["a dog barks"], "y": ["rain on a roof"]}, with_meteor=False)
    assert per_clip["x"]["CIDEr-D"] == 0.0 and per_clip["x"]["BLEU-4"] < 1e-6
    assert per_clip["y"]["ROUGE-L"] == pytest.approx(1.0)


def test_ptb_tokenisation_lowercases_and_drops_punctuation():
    assert ptb_tokenize({"k": ["A Dog, barking!", ""]}) == {"k": ["a dog barking", ""]}


def test_wer_cer_after_normalisation():
    from audiotune.answers import normalize_transcript
    from audiotune.metrics import asr_metrics

    assert normalize_transcript("  Hello, World!  It's ME. ") == "hello world it s me"
    for normalizer in ("simple", "whisper", "whisper-basic"):  # no number, spelling or contraction here
        metrics, per_clip = asr_metrics({"a": "Hello world!", "b": "the cat sat"},
                                        {"a": ["hello, world"], "b": ["the cat sat down"]}, normalizer)
        assert metrics["WER"] == pytest.approx(1 / 6)  # one deletion over six reference words
        assert per_clip["a"]["WER"] == 0.0 and per_clip["b"]["WER"] == pytest.approx(0.25)
        assert metrics["CER"] == pytest.approx(5 / (11 + 16))  # " down" missing: 5 of 27 characters


def test_wer_uses_whispers_english_normaliser_by_default():
    """The field's known cases, each written out by hand from what Whisper's English normaliser is documented to
    do (openai/whisper whisper/normalizers/english.py: numbers to digits, english.json's British→American map,
    contractions and titles spelled out, fillers dropped): a hypothesis that differs only so scores WER 0 by
    default and does not under the simple rule."""
    from audiotune.errors import ConfigError
    from audiotune.answers import transcript_normalizer
    from audiotune.metrics import asr_metrics

    english = transcript_normalizer()
    assert english("Twenty five dollars.") == "$25"
    assert english("The colour is grey.") == "the color is gray"
    assert english("Um, I won't go, uh, Mr. Smith.") == "i will not go mister smith"
    cases = {"numbers": ("It costs twenty five dollars.", "it costs $25"),
             "spelling": ("The colour of the theatre.", "the color of the theater"),
             "contraction": ("I can't say.", "i can not say"),
             "fillers": ("Well, um, yes.", "well yes")}
    predictions = {k: hyp for k, (_, hyp) in cases.items()}
    references = {k: [ref] for k, (ref, _) in cases.items()}
    assert asr_metrics(predictions, references)[0]["WER"] == 0.0
    assert asr_metrics(predictions, references, "simple")[0]["WER"] > 0.3
    assert transcript_normalizer("whisper-basic")("Ein Satz, bitte!") == "ein satz bitte"
    with pytest.raises(ConfigError, match="--asr-normalizer 'nope'"):
        transcript_normalizer("nope")
    from audiotune.config import EvalConfig

    with pytest.raises(ConfigError, match="--asr-normalizer 'nope': choose one of whisper, whisper-basic, simple"):
        EvalConfig.from_flat(model="m", dataset="d", asr_normalizer="nope").validate()  # before any model loads


def test_accuracy_and_macro_f1():
    from audiotune.metrics import classification_metrics

    predictions = {"1": "Dog.", "2": "the cat", "3": "dog", "4": "bird"}
    references = {"1": ["dog"], "2": ["cat"], "3": ["cat"], "4": ["bird"]}
    metrics, per_clip = classification_metrics(predictions, references)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # dog: tp1 fp1 fn0 → 2/3; cat: tp1 fp0 fn1 → 2/3; bird: 1 → macro (2/3+2/3+1)/3
    assert metrics["macro-F1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert per_clip["3"]["accuracy"] == 0.0


def test_spice_is_skipped_with_one_clear_notice(tmp_path):
    notices: list[str] = []
    metrics, _ = caption_metrics({"x": "a dog"}, {"x": ["a dog barks"]}, with_meteor=False, notices=notices,
                                 spice_models=tmp_path)
    assert "SPICE" not in metrics and "SPIDEr" not in metrics
    assert len(notices) == 1 and "stanford-corenlp-3.6.0.jar" in notices[0]


def test_standard_errors_only_for_metrics_that_are_means_over_clips():
    from audiotune.metrics import standard_errors

    rows = [{"scores": {"accuracy": a, "macro-F1": 0.3}} for a in (1.0, 0.0, 1.0, 1.0)]
    # mean 0.75; squared deviations 1/16, 9/16, 1/16, 1/16 sum to 3/4; /(n-1) = 1/4; stdev 1/2; / sqrt(4) = 1/4
    assert standard_errors(rows) == {"accuracy": pytest.approx(0.25)}
    cider = [{"scores": {"CIDEr-D": 0.5}}, {"scores": {"CIDEr-D": 1.5}}]  # stdev sqrt(1/2), / sqrt(2) = 1/2
    assert standard_errors(cider) == {"CIDEr-D": pytest.approx(0.5)}
    assert standard_errors([{"scores": {"WER": 0.2}}, {"scores": {"WER": 0.4}}]) == {}  # a corpus ratio: none
    assert standard_errors(rows[:1]) == {}  # one clip: no spread to speak of
