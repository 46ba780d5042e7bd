# GuideGen — `make help` lists the targets. `make demo` and `make test` set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch pair installed before the project (overridable: make setup TORCH_SPEC="torch==X ...").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.guidegen-installed
DATA ?= data/phantom
N_CASES ?= 1000
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=

.PHONY: help setup test test-slow demo data train-text train-stage1 train-vae train-stage2 \
        generate evaluate bench lint clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv, install $(TORCH_SPEC), then the project (-e .[dev]); idempotent

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || \
	  $(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

test: setup ## Run the fast test suite (CI runs this)
	$(PY) -m pytest -m "not slow" --durations=20 $(PYTEST_ARGS)

test-slow: setup ## Run the slow tests too
	$(PY) -m pytest --durations=20 $(PYTEST_ARGS)

demo: setup ## Generate CT + label cases from the example reports with the default bundle into outputs/demo
	$(PY) -m pipelines.demo --out outputs/demo

data: setup ## Write the phantom dataset to $(DATA) (N_CASES cases, JOBS processes; resumable)
	$(PY) -m shared.data.build --out $(DATA) --n-cases $(N_CASES) --jobs $(JOBS)

$(DATA)/manifest.jsonl:
	$(MAKE) data

train-text: setup $(DATA)/manifest.jsonl ## Report<->anatomy CLIP pretraining on the phantom
	$(PY) -m stage1_mask.clip fit -c stage1_mask/configs/clip/phantom.yaml

train-stage1: setup $(DATA)/manifest.jsonl ## Train the stage-1 mask sampler on the phantom (resumable)
	$(PY) -m stage1_mask fit -c stage1_mask/configs/phantom.yaml

train-vae: setup $(DATA)/manifest.jsonl ## Train the CT slice VAE on the phantom (resumable)
	$(PY) -m stage2_ct fit -c stage2_ct/configs/vae/phantom.yaml

train-stage2: setup $(DATA)/manifest.jsonl ## Train the VAE (if no artifact is given), then the slice LDM
	$(PY) -m stage2_ct fit -c stage2_ct/configs/ldm/phantom.yaml

generate: setup ## Reports -> CT + labels: make generate ARGS="--prompts FILE --out DIR [...]"
	$(PY) -m pipelines.run $(ARGS)

evaluate: setup ## Evaluate generated cases (not built yet)
	@if [ -f pipelines/evaluate.py ]; then $(PY) -m pipelines.evaluate $(ARGS); \
	 else echo "evaluate: pipelines/evaluate.py does not exist yet (issue: evaluation)"; exit 2; fi

bench: setup ## Run the benchmarks in bench/ (prints tables, writes bench/results/*.json)
	@set -e; for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f; done

lint: setup ## ruff + the import-layer contract
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean: ## Remove caches and outputs (keeps .venv and data/)
	rm -rf outputs .pytest_cache .ruff_cache .hypothesis lightning_logs
