#!/usr/bin/env bash
# Fill benchmarks/gpu-wheels/ (git-ignored) with what the GPU machine lacks to run benchmarks/gpu_check.py, so that
# it installs there with no network:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --ignore-requires-python \
#       --target /tmp/site benchmarks/gpu-wheels/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py
#
# The machine (docs: the device's KINDS.md) is Python 3.12 with torch 2.11, transformers 5.17, peft, accelerate,
# huggingface-hub 1.33, tokenizers 0.23.2, safetensors 0.8, pandas, pyarrow, fsspec, xxhash, numpy, pyyaml and jinja2.
# gpu_check.py's path (audiotune.train: data via `datasets`, decoding via soundfile + soxr) needs besides those:
# transformers 5.24 (the version pyproject pins and CI tests), datasets with dill and multiprocess, soundfile
# with cffi and pycparser, soxr, and audiotune itself (a wheel built from this checkout). Versions are this repo's
# tested ones (.venv). --no-deps: each is named here; --target keeps the machine's own packages untouched.
# --ignore-requires-python: pyproject says <3.12 (the tested Python); the machine's is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=benchmarks/gpu-wheels
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" \
    transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 soundfile==0.14.0 cffi==2.1.1 \
    pycparser==3.12 soxr==1.1.0
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
ls -1 "$OUT"
BYTES=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
echo "total: $((BYTES / 1024 / 1024)) MiB ($BYTES bytes; the device carries at most 64 MiB)"
[ "$BYTES" -lt $((64 * 1024 * 1024)) ] || { echo "over 64 MiB: the device will not carry it" >&2; exit 1; }
