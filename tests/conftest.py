"""Session fixtures: tiny checkpoints and synthetic data are built once (seconds) and shared."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A registry entry's facts without a checkpoint come from its tiny checkpoint, built into this cache
# (models/loading.py offline_facts); each build is keyed by its inputs (models/tiny.py builder_digest), so code of
# another commit never reuses a stale one.
os.environ.setdefault("AUDIOTUNE_CACHE", os.path.join(__import__("tempfile").gettempdir(), "audiotune-test-cache"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs two pytest-xdist workers (one per core on a 2-core machine): each worker, and every process it
# starts, computes on its share of the cores. Two workers of two OpenMP threads each would oversubscribe the cores,
# and OpenMP's spin-waiting makes that slower than one thread each.
_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def micro_af3(tmp_path_factory) -> Path:
    """A micro AF3 (same architecture, smallest sizes) for unit tests."""
    from audiotune.models.tiny import build_tiny

    return build_tiny("af3", tmp_path_factory.mktemp("micro-af3"), seed=0, preset="micro")


@pytest.fixture(scope="session")
def tiny_af3(tmp_path_factory) -> Path:
    """The default tiny AF3 (benchmark proportions): used where a test needs the model to learn."""
    from audiotune.models.tiny import build_tiny

    return build_tiny("af3", tmp_path_factory.mktemp("tiny-af3"), seed=0)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 short synthetic clips (1–3 s): train 38, validation 5, test 5."""
    from audiotune.data.synthetic import write_synthetic_audiocaps

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_audiocaps(out, n_clips=48, seed=1, min_seconds=1.0, max_seconds=3.0)
    return out


@pytest.fixture(scope="session")
def family(micro_af3):
    from audiotune.models.loading import resolve_family

    return resolve_family(str(micro_af3))


@pytest.fixture(scope="session")
def micro_processor(micro_af3):
    from audiotune.models.loading import load_processor

    return load_processor(micro_af3)


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_af3, synth_data) -> Path:
    """A LoRA adapter trained for 40 steps on the tiny model (~15 s; used by merge/pipeline/infer tests)."""
    from audiotune.train_config import TrainConfig
    from audiotune.train import train

    out = tmp_path_factory.mktemp("adapter")
    cfg = TrainConfig.from_flat(model=str(tiny_af3), dataset=str(synth_data), output_dir=str(out),
                                per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=3e-3,
                                warmup_steps=4, max_steps=40, logging_steps=5, eval_steps=20, save_steps=40,
                                eval_take=4, seed=0)
    train(cfg)
    return out


@functools.cache
def offline_entry(name: str):
    """The registry entry ``name`` with its facts read from its tiny checkpoint (``loading.offline_facts``): what a
    test hands data code that reads a family's facts (rate, audio tokens, template) without a checkpoint."""
    from audiotune.models.families import family_by_name
    from audiotune.models.loading import offline_facts

    return offline_facts(family_by_name(name))


def tone(seconds: float = 1.0, freq: float = 440.0, rate: int = 16000):
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype("float32")


# --- `make models-doc`: record each family's end-to-end outcome for docs/models.md -------------------------------

def pytest_addoption(parser):
    parser.addoption("--family-results", default=None, help="Write tests/test_families.py outcomes to this JSON file.")


_family_outcomes: dict[str, str] = {}
_family_facts: dict[str, dict] = {}


def family_facts(family) -> dict:
    """What the end-to-end test inferred for a family (docs/models.md shows it; passed on as a user property)."""
    return {"audio_token": family.audio_token, "sampling_rate": family.sampling_rate,
            "window_seconds": family.window_seconds, "tokens_10s": family.audio_tokens(10.0)}


def pytest_runtest_logreport(report):
    if "test_families_end_to_end[" not in report.nodeid:
        return
    name = report.nodeid.rsplit("[", 1)[1].rstrip("]")
    for key, value in getattr(report, "user_properties", []):
        if key == "family_facts":
            _family_facts[name] = value
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "failed"  # a strict xfail that passed is a failure
        else:
            outcome = report.outcome
        _family_outcomes[name] = outcome


def pytest_sessionfinish(session):
    path = session.config.getoption("--family-results")
    if path and _family_outcomes:
        import json

        results = {name: {"outcome": outcome, **_family_facts.get(name, {})}
                   for name, outcome in _family_outcomes.items()}
        Path(path).write_text(json.dumps(results, indent=1, sort_keys=True))


@pytest.fixture
def cli(capsys, monkeypatch):
    """``audiotune ARGS`` run by the CLI's own ``main()`` in this process → (exit code, stdout, stderr).

    The same parsing, error rendering and exit codes as ``python -m audiotune`` (``__main__`` calls ``main()``),
    without a fresh interpreter importing torch each time; tests of the process itself (signals, launchers) spawn one.
    """
    import sys

    from audiotune.cli import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["audiotune", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
