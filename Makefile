# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup system-deps test-system-deps vllm-env torch-floor-env demo test test-fast bench rl-bench encoder-bench gpu-wheels soak models-doc config-doc clean

setup: system-deps $(VENV)/.installed

system-deps:
	@bash scripts/system-deps.sh

test-system-deps:
	@bash scripts/system-deps.sh --test

# The tested stack, installed first and exactly so that pyproject's ranges resolve to it: torch 2.14.1 with
# torchvision 0.29.1 (a CUDA build; it runs on the CPU) and torchaudio 2.11.1 beside it, so the families with a
# vision tower or a torchaudio feature extractor run too; torchcodec 0.17.0 loads beside that torch.
TORCH_STACK := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1 torchcodec==0.17.0
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q $(TORCH_STACK)
	$(PY) -m pip install -q -e '.[test,ui,track,vision-audio]' $(TORCH_STACK)
	touch $@

# vLLM in its own environment (its torch/transformers pins differ from ours): --backend vllm uses it. The script
# returns at once when the environment is already built by its current recipe (its stamp file).
vllm-env:
	bash scripts/vllm-env.sh .venv-vllm

# The lowest torch pyproject claims (torch>=2.11), in its own environment: `make test` runs the tests not marked slow
# in it after the full suite, so the floor is tested, not hoped for.
torch-floor-env:
	bash scripts/torch-floor-env.sh .venv-torch-floor

demo: setup
	$(VENV)/bin/audiotune demo --out runs/demo

# The Debian packages and the three environments are independent (and mostly waiting on disk and network), so
# they are built side by side; one apt-get only (its lock), with the test packages.
# pytest-xdist: two workers, a test file each at a time (a file's shared fixtures, such as its vLLM engine, are
# built once). The suite alone keeps about 1.2 of 2 cores busy (subprocess starts, servers, waiting on them).
XDIST := -n 2 --dist loadfile
test:
	@$(MAKE) --no-print-directory -j4 test-system-deps $(VENV)/.installed vllm-env torch-floor-env
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)
	.venv-torch-floor/bin/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Runs every family's end-to-end test and regenerates docs/models.md from the registry and the outcomes.
models-doc: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/test_families.py -k end_to_end --family-results .family-results.json || true
	$(PY) -c "import json; from audiotune.models.catalog import render_markdown; open('docs/models.md', 'w').write(render_markdown(json.load(open('.family-results.json'))))"

# Regenerates docs/configuration.md from the config dataclasses (tests/test_config_cli.py checks it is current).
config-doc: setup
	$(PY) -m audiotune.config_doc

bench: setup
	$(PY) benchmarks/run.py

# A bounded soak of `audiotune serve` on 127.0.0.1 (about a minute): 300 requests, 32 clients, one in five malformed.
soak: setup
	$(PY) benchmarks/soak.py

# GRPO vs the supervised adapter it starts from, on the synthetic beep-count task (updates its BENCHMARKS.md section).
rl-bench: setup
	$(PY) benchmarks/bench_rl.py --write

# LM-only LoRA vs encoder LoRA vs the whole encoder (and LoRA reaching its convolutions) on a tone the frozen
# encoder hears and the same tone masked from its random front end (updates its BENCHMARKS.md section; about
# 10 minutes on 2 shared cores).
encoder-bench: setup
	$(PY) benchmarks/bench_encoder.py --write

# The wheels benchmarks/gpu_check.py needs on the GPU machine, in benchmarks/gpu-wheels/ (git-ignored, under 64 MiB).
gpu-wheels: setup
	PY=$(PY) bash benchmarks/gpu_wheels.sh

clean:
	rm -rf runs .pytest_cache
