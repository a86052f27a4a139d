# askdraft: every arrow of the pipeline is a target, and every target is a file on disk.
#   make setup      venv + pinned stack (CPU torch here, the CUDA build where a GPU is present)
#   make test       set up, then the whole test suite (what CI runs)
#   make pipeline   data -> base -> A -> B -> drafts -> pairs -> C -> eval -> report
# Variables: BASE (model dir), PROFILE (cpu | smoke | gpu | gpu-fast; default by hardware), LIMIT (rows),
#   ISOLATE=1 (pipeline: a process per command instead of one process for all stages).
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
# one device: train in this process (the default `accelerate launch` re-imports the stack, ~10 s)
TRAIN := $(AXOLOTL) train --launcher python
# axolotl starts `accelerate launch` from PATH: put the chosen environment's scripts first
export PATH := $(if $(findstring /,$(PY)),$(abspath $(dir $(PY))):,)$(PATH)
export AXOLOTL_DO_NOT_TRACK := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
PROFILE ?= $(if $(filter 1,$(HAS_GPU)),gpu,cpu)
BASE_NAME ?= SmolLM2-135M-Instruct
BASE ?= models/base/$(BASE_NAME)
# C_VARIANT=NAME trains a phase C beside the default one: its pairs, adapter, drafts and results
# carry -NAME (PAIR_MODE=answer C_VARIANT=answer, or C_PROFILES=published-losses C_VARIANT=published);
# C_PROFILES adds recipe profiles to phase C only
C_VARIANT ?=
C_PROFILES ?=
CV := $(if $(C_VARIANT),-$(C_VARIANT),)
PAIRS := data/pairs$(CV).jsonl
DPO_NAME := dpo_phaseC$(CV)
DPO := models/$(DPO_NAME)
# smoke results go to results/<model>-smoke/, never over a full run's committed results
MODEL_NAME ?= $(notdir $(BASE))$(CV)$(if $(filter smoke,$(PROFILE)),-smoke,)
RUNS := runs/$(PROFILE)
# profile -> recipe profiles (recipes/profiles/*.yaml) and data size
PROFILES_cpu := cpu
PROFILES_smoke := cpu smoke
PROFILES_gpu := gpu
PROFILES_gpu-fast := gpu-fast
# phase C only, after the above (keys of the askdraft_dpo plugin; gpu keeps an 8 GB card's defaults)
PROFILES_C_cpu := dpo-fast
PROFILES_C_smoke := dpo-fast
PROFILES_C_gpu-fast := dpo-fast
LIMIT_smoke := 64
DRAFT_LIMIT_smoke := 32
DRAFT_TOKENS_smoke := 48
EVAL_LIMIT_smoke := 24
ATTR_LIMIT_smoke := 4
ATTR_LIMIT ?= $(or $(ATTR_LIMIT_$(PROFILE)),50)
JUDGE_LIMIT_smoke := 8
JUDGE_LIMIT ?= $(or $(JUDGE_LIMIT_$(PROFILE)),50)
# smoke: a 1-epoch, 64-row student rarely writes a parseable draft, and draft mode drops those
PAIR_MODE_smoke := answer
PAIR_MODE ?= $(or $(PAIR_MODE_$(PROFILE)),draft)
SG_ROUNDS ?= 1
# generation and scoring batches: a decode step of a small model costs about the same at 16 or
# 256 rows on a GPU; lower them for a 7B on an 8 GB card
DRAFT_BATCH ?= $(if $(filter 1,$(HAS_GPU)),256,16)
EVAL_BATCH ?= $(if $(filter 1,$(HAS_GPU)),64,8)
LIMIT ?= $(LIMIT_$(PROFILE))
SFT_LIMIT := $(if $(LIMIT),--limit $(LIMIT),)
# a question draft (sub-questions with answers, then the tentative answer) is up to ~105 tokens
DRAFT_TOKENS ?= $(or $(DRAFT_TOKENS_$(PROFILE)),128)
DRAFT_LIMIT := $(if $(DRAFT_LIMIT_$(PROFILE)),--limit $(DRAFT_LIMIT_$(PROFILE)),) --max-new-tokens $(DRAFT_TOKENS)
# smoke: no generative strategyqa_cot (128 new tokens a question would double its eval time)
COT_TASK ?= $(if $(filter smoke,$(PROFILE)),,strategyqa_cot,)
EVAL_LIMIT := $(if $(EVAL_LIMIT_$(PROFILE)),--limit $(EVAL_LIMIT_$(PROFILE)),)
MERGED := models/cot_phaseB/merged
RESULTS := results/$(MODEL_NAME)
# the judge: an OpenAI-compatible server (JUDGE_URL, e.g. http://localhost:8000/v1, and JUDGE_MODEL;
# the key, if it needs one, only from the environment: OPENAI_API_KEY), or JUDGE_SERVE=MODEL_DIR
# to run `transformers serve` on that model for the stage (JUDGE_SERVE=$(BASE): the embedded
# model as its own judge, a pipeline check only)
JUDGE_URL ?=
JUDGE_MODEL ?=
JUDGE_SERVE ?=
# letter: one-letter A/B verdicts (any local model can give one); json: a verdict with a reason
JUDGE_MODE ?= $(if $(JUDGE_SERVE),letter,json)
RECIPE = $(ASKDRAFT) recipe recipes/$(1).yaml $(foreach p,$(PROFILES_$(PROFILE)),--profile $(p)) --set base_model=$(2) $(3) -o $(RUNS)/$(1)$(4).yaml

.PHONY: bench setup test test-fast data base sft phase-a phase-b merge-b drafts pairs phase-c drafts-c sg sg-eval val-c kfold eval attribution judge report pipeline phase-b-multi phase-c-multi clean-runs help
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
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests

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
	$(TRAIN) $(RUNS)/phase_a.yaml

phase-b: models/cot_phaseB/adapter_model.safetensors
models/cot_phaseB/adapter_model.safetensors: models/baseline_phaseA/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	$(TRAIN) $(RUNS)/phase_b.yaml

merge-b: models/cot_phaseB/merged/config.json
models/cot_phaseB/merged/config.json: models/cot_phaseB/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	$(AXOLOTL) merge-lora $(RUNS)/phase_b.yaml --lora-model-dir models/cot_phaseB  # not phase A's, which the recipe names
	touch $@  # merge-lora copies config.json with the base's old mtime: make would merge again

drafts: data/drafts/cot_phaseB/REPORT.json
data/drafts/cot_phaseB/REPORT.json: $(MERGED)/config.json
	$(ASKDRAFT) drafts --base $(MERGED) --name cot_phaseB --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT)

pairs: $(PAIRS)
$(PAIRS): data/drafts/cot_phaseB/REPORT.json
	$(ASKDRAFT) pairs --mode $(PAIR_MODE) --drafts data/drafts/cot_phaseB/train.jsonl \
	  --gold data/strategyqa_train_cot.jsonl --tokenizer $(MERGED) --allow-empty -o $@

phase-c: $(DPO)/adapter_model.safetensors
$(DPO)/adapter_model.safetensors: $(PAIRS) $(MERGED)/config.json
	$(call RECIPE,phase_c,$(MERGED),--set datasets.0.path=$(PAIRS) --set output_dir=$(DPO) $(foreach p,$(PROFILES_C_$(PROFILE)) $(C_PROFILES),--profile $(p)),$(CV))
	$(TRAIN) $(RUNS)/phase_c$(CV).yaml
	rm -f $(DPO)/model.safetensors  # axolotl also saves the whole model beside the adapter

drafts-c: data/drafts/$(DPO_NAME)/REPORT.json
data/drafts/$(DPO_NAME)/REPORT.json: $(DPO)/adapter_model.safetensors
	$(ASKDRAFT) drafts --base $(MERGED) --adapter $(DPO) --name $(DPO_NAME) --splits dev --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT)

SG := models/$(DPO_NAME)_sg
SG_LAST := $(SG)/round_$(SG_ROUNDS)
sg: $(SG_LAST)/ROUND.json
$(SG_LAST)/ROUND.json: $(DPO)/adapter_model.safetensors
	$(PY) tools/iterate_dpo.py --rounds $(SG_ROUNDS) --start-base $(MERGED) --start-adapter $(DPO) --out $(SG) \
	  --data-out data/sg$(CV) --mode $(PAIR_MODE) --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT) \
	  $(foreach p,$(PROFILES_$(PROFILE)) $(PROFILES_C_$(PROFILE)) $(C_PROFILES),--profile $(p))
# the SG model's own dev drafts, then its accuracy with and without them (stage SG of the results)
sg-eval: $(RESULTS)/evals/SG.strategyqa_draft.json
$(RESULTS)/evals/SG.strategyqa_draft.json: $(SG_LAST)/ROUND.json
	$(ASKDRAFT) drafts --base $(SG_LAST)/start --adapter $(SG_LAST) --name $(DPO_NAME)_sg --splits dev --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT)
	$(EVAL) --stage SG --base $(SG_LAST)/start --adapter $(SG_LAST) --drafts data/drafts/$(DPO_NAME)_sg/dev.jsonl \
	  --tasks strategyqa_draft,strategyqa_nodraft,strategyqa_draft_noconclusion

# phase C chosen honestly: a candidate's accuracy on the validation split (askdraft data --val-frac),
# never on dev (make kfold compares candidates with this)
val-c: results/val/$(MODEL_NAME)/evals/C.strategyqa_draft.json
results/val/$(MODEL_NAME)/evals/C.strategyqa_draft.json: $(DPO)/adapter_model.safetensors
	$(ASKDRAFT) drafts --base $(MERGED) --adapter $(DPO) --name $(DPO_NAME)_val --splits val --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT)
	$(ASKDRAFT) evaluate --model-name $(MODEL_NAME) --results results/val --batch-size $(EVAL_BATCH) $(EVAL_LIMIT) \
	  --stage C --base $(MERGED) --adapter $(DPO) --dev data/strategyqa_val.jsonl \
	  --drafts data/drafts/$(DPO_NAME)_val/val.jsonl --tasks strategyqa_draft,strategyqa_nodraft

# evaluation: lm-eval per stage (each writes results/<model>/evals/<stage>.<task>.jsonl and skips if done)
ABLATION_TASKS := strategyqa_draft,strategyqa_nodraft,strategyqa_shuffleddraft,strategyqa_draft_noconclusion
# the oracle ladder on phase B (teacher drafts with no / gold / flipped conclusion, shuffled, empty)
ORACLE_TASKS := strategyqa_teacher_noconclusion,strategyqa_teacher_gold,strategyqa_teacher_flipped,strategyqa_teacher_shuffled,strategyqa_emptydraft
EVAL = $(ASKDRAFT) evaluate --model-name $(MODEL_NAME) --batch-size $(EVAL_BATCH) $(EVAL_LIMIT)
eval: $(RESULTS)/evals/.done
$(RESULTS)/evals/.done: data/drafts/$(DPO_NAME)/REPORT.json
	$(EVAL) --stage base --base $(BASE) --tasks strategyqa
	$(EVAL) --stage A --base $(BASE) --adapter models/baseline_phaseA --tasks strategyqa
	$(EVAL) --stage B --base $(BASE) --adapter models/cot_phaseB --drafts data/drafts/cot_phaseB/dev.jsonl \
	  --tasks strategyqa,$(COT_TASK)$(ABLATION_TASKS),$(ORACLE_TASKS)
	$(EVAL) --stage C --base $(MERGED) --adapter $(DPO) --drafts data/drafts/$(DPO_NAME)/dev.jsonl \
	  --tasks strategyqa,$(ABLATION_TASKS)
	touch $@

attribution: $(RESULTS)/attribution/after_dpo.json
$(RESULTS)/attribution/after_dpo.json: data/drafts/$(DPO_NAME)/REPORT.json
	$(PY) tools/attention_tools.py --base $(MERGED) --drafts data/drafts/cot_phaseB/dev.jsonl \
	  --limit $(ATTR_LIMIT) --out $(RESULTS)/attribution/before_dpo.json --heatmaps $(RESULTS)/attribution/heatmaps_before
	$(PY) tools/attention_tools.py --base $(MERGED) --adapter $(DPO) --drafts data/drafts/$(DPO_NAME)/dev.jsonl \
	  --limit $(ATTR_LIMIT) --out $@ --heatmaps $(RESULTS)/attribution/heatmaps_after

judge: $(RESULTS)/judge.json
$(RESULTS)/judge.json: data/drafts/$(DPO_NAME)/REPORT.json
	@if [ -z "$(JUDGE_URL)$(JUDGE_SERVE)" ]; then echo "judge: set JUDGE_URL + JUDGE_MODEL or JUDGE_SERVE (skipped)"; else \
	$(ASKDRAFT) judge --drafts-a data/drafts/$(DPO_NAME)/dev.jsonl --drafts-b data/drafts/cot_phaseB/dev.jsonl \
	  --name-a $(DPO_NAME) --name-b cot_phaseB $(if $(JUDGE_URL),--base-url $(JUDGE_URL),--serve $(JUDGE_SERVE)) \
	  $(if $(JUDGE_MODEL),--model $(JUDGE_MODEL),) --mode $(JUDGE_MODE) --limit $(JUDGE_LIMIT) --out $@ || [ $$? -eq 1 ]; fi

report: | eval attribution judge
	$(ASKDRAFT) summarize --model-name $(MODEL_NAME)
	$(ASKDRAFT) report --model-name $(MODEL_NAME)

# the whole pipeline, stage by stage, each stage's wall time into results/<model>/wall_times.json
pipeline: | $(SETUP)
	PROFILE=$(PROFILE) PY=$(PY) MODEL_NAME=$(MODEL_NAME) $(PY) tools/run_stages.py $(if $(ISOLATE),--isolate,)

# several GPUs of one node (recipes/multi_gpu/README.md): effective batch 4 x (8 / NGPU) x NGPU = 32
NGPU ?= 2
ZERO ?=
MULTI = $(ASKDRAFT) recipe recipes/$(1).yaml --set base_model=$(2) --set gradient_accumulation_steps=$$((8 / $(NGPU))) \
	$(if $(ZERO),--set deepspeed=recipes/multi_gpu/zero$(ZERO).json,) -o runs/multi/$(1).yaml
phase-b-multi: models/baseline_phaseA/adapter_model.safetensors
	$(call MULTI,phase_b,$(BASE))
	$(AXOLOTL) train runs/multi/phase_b.yaml --launcher accelerate -- --num_processes $(NGPU)
phase-c-multi: data/pairs.jsonl $(MERGED)/config.json
	$(call MULTI,phase_c,$(MERGED))
	$(AXOLOTL) train runs/multi/phase_c.yaml --launcher accelerate -- --num_processes $(NGPU)

# the study: K folds over every question, phase C chosen per fold on a validation split, results pooled
# into results/<model>-kfold<K>/ (tools/askdraft/kfold.py); KFOLD_ARGS e.g. --parallel 5 --gpus 0,1
KFOLD ?= 5
KFOLD_ARGS ?=
kfold: $(BASE)/config.json
	$(ASKDRAFT) kfold --folds $(KFOLD) --base $(BASE) --profile $(PROFILE) $(KFOLD_ARGS)

clean-runs:
	rm -rf runs .cache/axolotl_prepared

bench: | $(SETUP)
	$(PY) -m askdraft.bench --pipeline
