#!/usr/bin/env bash
# Build .venv-torch-floor: audiotune on the lowest torch it claims (pyproject's `torch>=2.11`), with that release's
# torchvision, torchaudio and torchcodec, so the lower bound is tested rather than hoped for (`make test` runs the
# tests not marked slow in it). GPU images of late 2026 ship this set. PyPI's torch 2.11.0 for x86-64 Linux is a CUDA
# build (about 4.7 GB with its nvidia-* wheels); it runs on the CPU. torchcodec 0.11.1 is the release made for torch
# 2.11 (torchcodec's README compatibility table).
set -euo pipefail
# No pip cache: `make test` builds this beside .venv, and only one pip at a time uses the shared cache.
VENV=${1:-.venv-torch-floor}
FLOOR="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 torchcodec==0.11.1"
STAMP="$VENV/.installed-1"  # bump when this recipe changes: an older environment is rebuilt
# The editable install follows the checkout; only a new pyproject.toml (new dependencies) needs a rebuild.
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then exit 0; fi
rm -rf "$VENV"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --no-cache-dir --upgrade pip
"$VENV/bin/pip" install -q --no-cache-dir $FLOOR
"$VENV/bin/pip" install -q --no-cache-dir -e '.[test,ui,track,vision-audio]' $FLOOR
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
touch "$STAMP"
