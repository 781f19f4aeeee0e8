"""The package works as a user installs it: from its wheel, into a clean venv, dependencies from the wheel's metadata.

The wheel is built offline from a copy of the project (setuptools from the main venv, no build isolation). The venv
is plain (`python -m venv`: no system site-packages, nothing of the main venv): the user's torch goes in first, as on
a GPU image, then `pip install audiotune-*.whl` resolves everything else from the wheel's own `Requires-Dist`
(PyPI, or pip's cache). So a packaged file left out, a dependency
missing from the metadata, or a range that replaces the user's torch fails here.

Two stages, as users meet them: the wheel without extras (families needing torchvision, timm or torchaudio must
name what to install), then with `[vision-audio]` (every family builds). The commands run through the wheel's own
CLI entry point, one interpreter per stage (a process per command would cost minutes of imports).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from transformers import AutoConfig

from audiotune.models.families import FAMILIES
from tests.test_plan import _qwen2_decoder_parameters, _whisper_large_v3_encoder_parameters

ROOT = Path(__file__).resolve().parent.parent
AF3 = "nvidia/audio-flamingo-3-hf"
# The user's torch: the floor pyproject claims (torch>=2.11), the set GPU images of late 2026 ship (the releases
# .venv-torch-floor runs the other tests on, scripts/torch-floor-env.sh).
USER_TORCH = ["torch==2.11.0", "torchcodec==0.11.1"]
USER_EXTRAS = ["torchvision==0.26.0", "torchaudio==2.11.0"]
EXTRA_PACKAGES = {"torchvision", "torchaudio", "timm"}

# Runs in the clean venv: each command through `audiotune.cli:main` (the console script's entry point, error
# rendering included), its exit status and output recorded; an exception escaping it is reported as code 99.
DRIVER = r"""
import contextlib, io, json, sys
from audiotune.cli import main
commands, written = sys.argv[1:3]
results = []
for args in json.load(open(commands)):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["audiotune", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException as error:
        import traceback
        code, err = 99, io.StringIO("Traceback: " + traceback.format_exc())
    results.append({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue()})
json.dump(results, open(written, "w"))
"""


def _run(args, env, cwd, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _torch_version(python: Path, env, cwd) -> str:
    return _run([str(python), "-c", "import torch; print(torch.__version__)"], env, cwd).stdout.strip()


def _commands(python: Path, env, cwd: Path, commands: list[list[str]], name: str) -> dict[tuple, dict]:
    (cwd / f"{name}.json").write_text(json.dumps(commands))
    (cwd / "driver.py").write_text(DRIVER)
    _run([str(python), str(cwd / "driver.py"), str(cwd / f"{name}.json"), str(cwd / f"{name}-out.json")], env, cwd,
         timeout=1200)
    return {tuple(r["args"]): r for r in json.loads((cwd / f"{name}-out.json").read_text())}


# Lists, in an environment, the installed files of the given distributions and of everything they require (extras
# and environment markers followed), relative to its site-packages: {name: [relative paths]}.
CLOSURE = r"""
import json, os, sys, sysconfig
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
site, found, todo = sysconfig.get_paths()["purelib"], {}, [(n, ("",)) for n in sys.argv[1:]]
while todo:
    name, extras = todo.pop()
    dist = distribution(name)
    key = canonicalize_name(name)
    found.setdefault(key, [os.path.relpath(dist.locate_file(f), site) for f in dist.files])
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras):
            todo.append((requirement.name, ("", *requirement.extras)))
json.dump(found, sys.stdout)
"""
FLOOR_VENV = ROOT / ".venv-torch-floor"


def _seed_from_floor_venv(venv: Path, env, cwd) -> bool:
    """Give ``venv`` the user's torch by hard-linking the installed files of ``USER_TORCH`` and its requirements from
    ``.venv-torch-floor`` (`make test` builds it; the same releases), dist-info included, so pip sees them installed
    exactly as after ``pip install`` there: seconds instead of unpacking 4.7 GB of CUDA wheels again. Nothing else of
    that venv comes along (audiotune's own dependencies must still come from the wheel's metadata). False when the
    floor venv is absent or holds other releases; the caller installs from PyPI then."""
    floor_python = FLOOR_VENV / "bin" / "python"
    if not floor_python.exists():
        return False
    names = [spec.split("==")[0] for spec in USER_TORCH]
    versions = _run([str(floor_python), "-c", "import json, sys; from importlib.metadata import version; "
                     "print(json.dumps([version(n) for n in sys.argv[1:]]))", *names], env, cwd).stdout
    if json.loads(versions) != [spec.split("==")[1] for spec in USER_TORCH]:
        return False
    files = json.loads(_run([str(floor_python), "-c", CLOSURE, *names], env, cwd).stdout)
    floor_site, = FLOOR_VENV.glob("lib/python*/site-packages")
    site, = venv.glob("lib/python*/site-packages")
    present = {canonicalize_name(d.name.split("-")[0]) for d in site.glob("*.dist-info")}  # the venv's own pip
    for relative in (r for name, paths in files.items() if name not in present for r in paths):
        source, target = floor_site / relative, site / relative
        if relative.startswith("..") or not source.is_file():  # console scripts name the floor venv's python
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem
            shutil.copy2(source, target)
    return True


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """``(venv, wheel, env, folder)``: a clean venv holding the user's torch and the wheel with its dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_NO_INDEX", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1", COLUMNS="200",
               AUDIOTUNE_CACHE=str(tmp / "cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"),
          str(source)], env | {"PIP_NO_INDEX": "1"}, tmp)
    (wheel,) = (tmp / "dist").glob("audiotune-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp)
    python = venv / "bin" / "python"
    if not _seed_from_floor_venv(venv, env, tmp):
        _run([str(python), "-m", "pip", "install", "-q", *USER_TORCH], env, tmp)
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], env, tmp)
    return venv, wheel, env, tmp


@pytest.mark.slow
def test_the_wheel_installs_into_a_clean_venv_and_every_family_plans_and_builds(wheel_venv):
    venv, wheel, env, tmp = wheel_venv
    python = venv / "bin" / "python"
    # The clean venv sees neither the checkout nor the main venv: audiotune resolves inside it.
    located = _run([str(python), "-c", "import importlib.util, json, sys; print(json.dumps(["
                    "importlib.util.find_spec('audiotune').origin, [p for p in sys.path if 'site-packages' in p]]))"],
                   env, tmp).stdout
    origin, paths = json.loads(located)
    assert Path(origin).resolve().is_relative_to(venv.resolve()), f"audiotune imported from {origin}"
    assert paths and all(Path(p).resolve().is_relative_to(venv.resolve()) for p in paths), paths
    # The wheel's `torch>=2.11` kept the user's torch (an upper bound or a newer floor would have replaced it).
    assert _torch_version(python, env, tmp).startswith("2.11.0")

    listed = _run([str(venv / "bin" / "audiotune"), "models"], env, tmp, timeout=300).stdout  # the console script
    for family in FAMILIES.values():
        assert family.name in listed and family.hub_id in listed, family.name

    # Stage 1, no extras: every family builds, or names the packages to install.
    tiny = {name: ["tiny", "--family", name, "--preset", "micro", "--out", str(tmp / "tiny" / name)]
            for name in FAMILIES}
    bare = _commands(python, env, tmp, list(tiny.values()), "bare")
    needs_extras = set()
    for name, family in FAMILIES.items():
        result = bare[tuple(tiny[name])]
        missing = set(family.requires_packages) & EXTRA_PACKAGES
        if missing:
            needs_extras.add(name)
            assert result["code"] != 0, f"{name} built without {missing}"
            message = result["out"] + result["err"]
            assert "pip install" in message and all(p in message for p in missing), f"{name}: {message[-1500:]}"
            assert "Traceback" not in message, f"{name}: a traceback instead of a message: {message[-1500:]}"
        else:
            assert result["code"] == 0, f"{name}: {result['out'][-1500:]}{result['err'][-1500:]}"
    assert {"gemma3n", "fun_asr_nano", "qwen25omni", "phi4mm"} <= needs_extras  # the declared needs were exercised

    # Stage 2, with [vision-audio]: the torch stays, every family's main checkpoint plans and every family builds.
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[vision-audio]", *USER_EXTRAS,
          *USER_TORCH], env, tmp)
    assert _torch_version(python, env, tmp).startswith("2.11.0")
    plans = {name: ["plan", "--model", family.hub_id, "--json"] for name, family in FAMILIES.items()}
    full = _commands(python, env, tmp, [tiny[n] for n in sorted(needs_extras)] + list(plans.values()), "full")
    for name in needs_extras:
        result = full[tuple(tiny[name])]
        assert result["code"] == 0, f"{name}: {result['out'][-1500:]}{result['err'][-1500:]}"
    for name, family in FAMILIES.items():
        assert AutoConfig.from_pretrained(tmp / "tiny" / name).model_type in family.model_types, name
        result = full[tuple(plans[name])]
        if family.known_issue:  # a refused family says why, from the installed package too
            assert result["code"] != 0 and "not supported yet" in result["out"] + result["err"], name
            continue
        assert result["code"] == 0, f"{name}: {result['out'][-1500:]}{result['err'][-1500:]}"
        plan = json.loads(result["out"])
        assert plan["family"] == name and plan["parameters"]["total"] > 0, name
    lm = _qwen2_decoder_parameters(3584, 18944, 28, 28, 4, 151672)
    projector = 1280 * 3584 + 3584 + 3584 * 3584 + 3584
    af3 = json.loads(full[tuple(plans["af3"])]["out"])
    assert af3["parameters"]["total"] == lm + _whisper_large_v3_encoder_parameters() + projector == 8_267_215_360
    assert "shipped with audiotune" in af3["source"]
