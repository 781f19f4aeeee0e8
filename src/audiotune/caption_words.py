"""The words the synthetic captions are made of: each sound event's wordings and the phrases that join them.

Why a module of its own, below both readers: the synthetic dataset (``data/synthetic.py``) writes captions from
these wordings, and the tiny checkpoints' tokenizer (``models/tiny.py``) is trained on them so that every caption
word is in its vocabulary; neither reader should import the other for a word list.
"""

from __future__ import annotations

# Each event kind has several wordings so that the tokenizer, the model and the metrics see varied
# but faithful descriptions. "{n}" is a count word; wordings are lower-case and joined by connectors.
PITCHES = {
    "low": (220.0, ["a low tone", "a low-pitched hum", "a deep steady tone"]),
    "medium": (523.0, ["a medium tone", "a steady mid-pitched tone", "a plain tone"]),
    "high": (1318.0, ["a high tone", "a high-pitched whistle", "a shrill steady tone"]),
}
CHIRPS = {
    "rising": ["a rising sweep", "a tone that rises in pitch", "an upward glide"],
    "falling": ["a falling sweep", "a tone that falls in pitch", "a downward glide"],
}
NOISES = {
    "white": ["a burst of white noise", "a loud hiss", "a harsh static noise"],
    "pink": ["a burst of pink noise", "a soft rushing noise", "a sound like wind"],
    "brown": ["a burst of brown noise", "a low rumble", "a deep rumbling noise"],
}
BEEPS = ["{n} short beeps", "{n} quick beeps", "a beep repeated {n} times"]
SILENCE = ["a moment of silence", "a short pause", "silence"]
COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}
CONNECTORS = [" followed by ", " then ", ", and then ", " after which comes "]
OPENERS = ["", "we hear ", "you can hear ", "the audio has "]


def vocabulary_text() -> str:
    """All words the captions can use, for training a tokenizer that covers them."""
    parts: list[str] = []
    parts += [w for _, ws in PITCHES.values() for w in ws]
    parts += [w for ws in CHIRPS.values() for w in ws]
    parts += [w for ws in NOISES.values() for w in ws]
    parts += [b.format(n=c) for b in BEEPS for c in COUNTS.values()]
    parts += SILENCE + CONNECTORS + OPENERS
    return "\n".join(parts)
