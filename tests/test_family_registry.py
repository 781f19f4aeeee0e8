"""An unbound registry entry is a plain value: reading a fact builds nothing; the facts come from an explicit call.

Why it matters: a fact read that quietly trained a tokenizer and saved a checkpoint into the user's cache (seconds,
disk, and an import loop between the registry and the loader) is the behaviour these tests keep out. The expected
values are read from the published processor files, not from audiotune's inference.
"""

from __future__ import annotations

import json

import pytest

from audiotune.models.families import FAMILIES
from audiotune.models.family import FACTS
from audiotune.models.tiny import PROCESSORS_DIR


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """The tiny checkpoints' cache (models/tiny.py ``cached_tiny``) pointed at an empty folder."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("AUDIOTUNE_CACHE", str(cache))
    return cache


def test_reading_an_unbound_entrys_facts_builds_nothing(empty_cache):
    af3 = FAMILIES["af3"]
    assert not af3.bound
    assert af3.sampling_rate is None and af3.audio_token is None and af3.window_seconds is None
    assert af3.model_class is None and af3.audio_token_count is None  # no fact is derived behind the reader
    for family in FAMILIES.values():  # every fact of every entry: the override, or None
        for fact in FACTS:
            value = getattr(family, fact)
            assert value is None or fact in family.overridden, (family.name, fact)
    assert list(empty_cache.iterdir()) == []  # no tiny checkpoint was built


def test_offline_facts_are_the_published_processors(empty_cache):
    from audiotune.models.loading import offline_facts

    published = json.loads((PROCESSORS_DIR / "nvidia--audio-flamingo-3-hf" / "processor_config.json").read_text())
    af3 = offline_facts(FAMILIES["af3"])
    assert af3.sampling_rate == published["feature_extractor"]["sampling_rate"] == 16000
    assert af3.audio_token == published["audio_token"] == "<sound>"
    assert af3.window_seconds == published["feature_extractor"]["chunk_length"]
    assert af3.max_audio_seconds == published["max_audio_len"]
    assert af3.audio_tokens(2.0) == 50  # the processor's count: 200 mel frames, two stride-2 stages
    assert af3.overridden == ()  # every fact came from the checkpoint, none is claimed as an override
    assert [p.name.split("-")[0] for p in (empty_cache / "tiny-facts").iterdir()] == ["af3"]  # built on request
    assert FAMILIES["af3"].sampling_rate is None  # the registry entry itself is unchanged
