"""The package works installed from its wheel, not only from the checkout: every data file it reads is shipped.

The wheel is built offline from a copy of the project (setuptools from the main venv, no build isolation) and
installed into a fresh virtual environment that sees the main venv's dependencies through a ``.pth`` line but not
its ``.pth`` files, so the editable install (``/work/main/src`` on ``sys.path``) cannot shadow the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from audiotune.models.families import FAMILIES
from tests.test_plan import _qwen2_decoder_parameters, _whisper_large_v3_encoder_parameters

ROOT = Path(__file__).resolve().parent.parent
AF3 = "nvidia/audio-flamingo-3-hf"


def _run(args, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """``(bin folder, site-packages, env)`` of a fresh venv holding only the built wheel (plus the main deps)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1",
               COLUMNS="200")  # rich's tables unwrapped
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"),
          str(source)], env, tmp)
    (wheel,) = (tmp / "dist").glob("audiotune-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp)
    (packages,) = (venv / "lib").glob("python*/site-packages")
    # Only the dependencies: a .pth line adds the main site-packages, whose own .pth files (the editable
    # install's among them) are not processed.
    (packages / "main-venv-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-compile", str(wheel)], env, tmp)
    return venv / "bin", packages, env


@pytest.mark.slow
def test_the_installed_wheel_plans_builds_and_lists_offline(wheel_env, tmp_path):
    bin_dir, packages, env = wheel_env
    # Where `import audiotune` resolves in that environment (find_spec: the same lookup, without the import's cost).
    located = _run([str(bin_dir / "python"), "-c",
                    "import importlib.util; print(importlib.util.find_spec('audiotune').origin)"], env, tmp_path)
    module = Path(located.stdout.strip()).resolve()
    assert module.is_relative_to(packages.resolve()), f"audiotune imported from {module}, not the wheel"
    command = str(bin_dir / "audiotune")  # the wheel's console script

    planned = _run([command, "plan", "--model", AF3, "--json"], env, tmp_path)
    plan = json.loads(planned.stdout)
    lm = _qwen2_decoder_parameters(3584, 18944, 28, 28, 4, 151672)
    projector = 1280 * 3584 + 3584 + 3584 * 3584 + 3584
    assert plan["parameters"]["total"] == lm + _whisper_large_v3_encoder_parameters() + projector == 8_267_215_360
    assert plan["family"] == "af3" and "shipped with audiotune" in plan["source"]

    tiny = tmp_path / "tiny"
    _run([command, "tiny", "--family", "af3", "--preset", "micro", "--out", str(tiny)], env, tmp_path)
    config = AutoConfig.from_pretrained(tiny)
    assert config.model_type == "audioflamingo3" and (tiny / "model.safetensors").stat().st_size > 0

    listed = _run([command, "models"], env, tmp_path, timeout=120).stdout
    for family in FAMILIES.values():
        assert family.name in listed and family.hub_id in listed, family.name
