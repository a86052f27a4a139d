"""The pipeline's stages, a row each: the make target, its recipe and prompt templates, the commands
its make recipe runs, what it reads and writes, the lm-eval tasks it scores and the stages it needs.

make runs the stages (Makefile). This table is what the Python side reads: tools/run_stages.py's
default stages, kfold's stage groups, evaluate's task sets, and README.md's pipeline table
(tools/doc_tables.py). tests/test_pipeline_table.py checks it against the Makefile's rules, the
Makefile's task lists and the lm-eval task files, so a stage or task added in one place and not
the other fails there. Paths are those of the default run, <BASE_NAME> and <MODEL_NAME> the make
variables; a phase C variant (C_VARIANT=NAME) adds -NAME to pairs, phase C and what follows it.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from askdraft import REPO_ROOT

TASK_DIR = "lm_eval_tasks/strategyqa"

# lm-eval task groups (TASK_DIR/<group>.yaml lists the same tasks): a short name for each task
TASK_GROUPS = {
    "strategyqa_ablations": {"draft": "strategyqa_draft", "nodraft": "strategyqa_nodraft",
                             "shuffled": "strategyqa_shuffleddraft",
                             "noconclusion": "strategyqa_draft_noconclusion"},  # own draft, tentative answer removed
    # the oracle ladder: teacher drafts with no / gold / flipped conclusion, shuffled, and an empty draft
    "strategyqa_oracle": {"teacher_noconclusion": "strategyqa_teacher_noconclusion",
                          "teacher_gold": "strategyqa_teacher_gold", "teacher_flipped": "strategyqa_teacher_flipped",
                          "teacher_shuffled": "strategyqa_teacher_shuffled", "empty": "strategyqa_emptydraft"},
    # the draft's sub-questions answered from the BM25 store of StrategyQA facts; controls: the question alone, the gold decomposition
    "strategyqa_answered": {"answered_draft": "strategyqa_answered_draft",
                            "answered_question": "strategyqa_answered_question",
                            "answered_gold": "strategyqa_answered_gold"},
}


def tasks(*names):
    """lm-eval task names, each group (TASK_GROUPS) replaced by its tasks."""
    return tuple(t for n in names for t in (TASK_GROUPS[n].values() if n in TASK_GROUPS else (n,)))


@dataclass(frozen=True)
class Command:
    text: str  # as a user types it
    tool: str | None = None  # the file that implements it


def askdraft(sub, module=None):
    return Command(f"askdraft {sub}", f"tools/askdraft/{module or sub.replace('-', '_')}.py")


def script(path):
    return Command(f"python {path}", path)


@dataclass(frozen=True)
class Stage:
    name: str  # the make target
    commands: tuple  # Command, in the order the make recipe runs them
    outputs: tuple  # files or folders (ending in /) it writes; {a,b} stands for both
    inputs: tuple = ()  # what it reads: an upstream stage's output or a file of the repo
    needs: tuple = ()  # stages whose files its make target depends on (under any PAIR_MODE)
    recipe: str | None = None  # recipes/*.yaml
    templates: tuple = ()  # prompt_templates/* its prompts are rendered from
    eval_tasks: tuple = ()  # lm-eval tasks or TASK_GROUPS names


TRAIN, MERGE = Command("axolotl train"), Command("axolotl merge-lora")  # the recipe column links the recipe
PHASE_C = Command("axolotl train", "plugins/askdraft_dpo/README.md")
ANSWER, DRAFT, JUDGE = (f"prompt_templates/{n}.jinja" for n in ("answer", "draft", "judge"))
MERGED, DPO, B_DRAFTS, C_DRAFTS = ("models/cot_phaseB/merged/", "models/dpo_phaseC/", "data/drafts/cot_phaseB/",
                                   "data/drafts/dpo_phaseC/")
EVALS = "results/<MODEL_NAME>/evals/"

STAGES = (
    Stage("data", (askdraft("data"),), ("data/MANIFEST.json", "data/strategyqa_{train_baseline,train_cot,dev,val}.jsonl"),
          inputs=("data/strategyqa/",), templates=(DRAFT,)),
    Stage("base", (askdraft("base-model"),), ("models/base/<BASE_NAME>/",)),
    Stage("sft", (askdraft("sft-data"),), ("data/sft/",), needs=("data", "base"), templates=(ANSWER, DRAFT),
          inputs=("data/strategyqa_{train_baseline,train_cot}.jsonl", "models/base/<BASE_NAME>/")),
    Stage("phase-a", (askdraft("recipe"), TRAIN), ("models/baseline_phaseA/",), needs=("sft",),
          recipe="recipes/phase_a.yaml", templates=(ANSWER,), inputs=("data/sft/phase_a.jsonl", "models/base/<BASE_NAME>/")),
    Stage("phase-b", (askdraft("recipe"), TRAIN), ("models/cot_phaseB/",), needs=("phase-a",),
          recipe="recipes/phase_b.yaml", templates=(DRAFT,), inputs=("data/sft/phase_b.jsonl", "models/baseline_phaseA/")),
    Stage("merge-b", (askdraft("recipe"), MERGE), (MERGED,), needs=("phase-b",), recipe="recipes/phase_b.yaml",
          inputs=("models/cot_phaseB/", "models/base/<BASE_NAME>/")),
    Stage("drafts", (askdraft("drafts"),), (B_DRAFTS,), needs=("merge-b",), templates=(DRAFT,),
          inputs=(MERGED, "data/strategyqa_{train_cot,dev}.jsonl")),
    Stage("drafts-sampled", (askdraft("drafts"),), ("data/drafts/cot_phaseB_sampled_s{2,3}/",), needs=("merge-b",),
          templates=(DRAFT,), inputs=(MERGED, "data/strategyqa_train_cot.jsonl")),
    Stage("pairs", (askdraft("pairs"),), ("data/pairs.jsonl",), needs=("drafts", "drafts-sampled"),
          templates=(ANSWER, DRAFT), inputs=(f"{B_DRAFTS}train.jsonl", "data/strategyqa_train_cot.jsonl", MERGED)),
    Stage("phase-c", (askdraft("recipe"), PHASE_C), (DPO,), needs=("pairs", "merge-b"), recipe="recipes/phase_c.yaml",
          templates=(ANSWER, DRAFT), inputs=("data/pairs.jsonl", MERGED)),
    Stage("val-c", (askdraft("drafts"), askdraft("evaluate")), ("data/drafts/dpo_phaseC_val/", "results/val/<MODEL_NAME>/evals/"),
          needs=("phase-c",), templates=(DRAFT, ANSWER), eval_tasks=tasks("strategyqa_draft", "strategyqa_nodraft"),
          inputs=(DPO, MERGED, "data/strategyqa_val.jsonl")),
    Stage("drafts-c", (askdraft("drafts"),), (C_DRAFTS,), needs=("phase-c",), templates=(DRAFT,),
          inputs=(DPO, MERGED, "data/strategyqa_dev.jsonl")),
    Stage("eval", (askdraft("evaluate"),), (EVALS,), needs=("drafts-c",), templates=(ANSWER, DRAFT),
          eval_tasks=("strategyqa", "strategyqa_cot", *TASK_GROUPS),
          inputs=("models/base/<BASE_NAME>/", "models/baseline_phaseA/", "models/cot_phaseB/", MERGED, DPO,
                  f"{B_DRAFTS}dev.jsonl", f"{C_DRAFTS}dev.jsonl", "data/strategyqa_dev.jsonl", "data/strategyqa/")),
    Stage("attribution", (script("tools/attention_tools.py"),), ("results/<MODEL_NAME>/attribution/",), needs=("drafts-c",),
          templates=(ANSWER,), inputs=(MERGED, DPO, f"{B_DRAFTS}dev.jsonl", f"{C_DRAFTS}dev.jsonl")),
    Stage("judge", (askdraft("judge"),), ("results/<MODEL_NAME>/judge.json",), needs=("drafts-c",), templates=(JUDGE,),
          inputs=(f"{B_DRAFTS}dev.jsonl", f"{C_DRAFTS}dev.jsonl")),
    Stage("quality", (askdraft("question-quality", "quality"),), ("results/<MODEL_NAME>/question_quality.json",),
          needs=("drafts-c",), inputs=(f"{B_DRAFTS}dev.jsonl", f"{C_DRAFTS}dev.jsonl", "data/strategyqa/")),
    Stage("sg", (script("tools/iterate_dpo.py"),), ("models/dpo_phaseC_sg/", "data/sg/"), needs=("phase-c",),
          recipe="recipes/phase_c.yaml", templates=(DRAFT, ANSWER), inputs=(MERGED, DPO, "data/strategyqa_train_cot.jsonl")),
    Stage("sg-eval", (askdraft("drafts"), askdraft("evaluate")), ("data/drafts/dpo_phaseC_sg/", EVALS), needs=("sg",),
          templates=(DRAFT, ANSWER), inputs=("models/dpo_phaseC_sg/", "data/strategyqa_dev.jsonl"),
          eval_tasks=tasks("strategyqa_draft", "strategyqa_nodraft", "strategyqa_draft_noconclusion")),
    Stage("report", (askdraft("summarize", "summary"), askdraft("report")),
          ("results/<MODEL_NAME>/{summary.json,report.md}",), needs=("eval", "attribution", "judge", "quality"),
          inputs=(EVALS, "results/<MODEL_NAME>/attribution/", "results/<MODEL_NAME>/judge.json",
                  "results/<MODEL_NAME>/question_quality.json")),
)
BY_NAME = {s.name: s for s in STAGES}


def names(first, last, without=()):
    """The stage names from first to last, in the table's order, less those in `without`."""
    order = [s.name for s in STAGES]
    return tuple(n for n in order[order.index(first):order.index(last) + 1] if n not in without)


# `make pipeline` (tools/run_stages.py): sft makes data first; pairs makes drafts-sampled where
# PAIR_MODE=quality; val-c is make kfold's choice; the SG loop is optional (make sg sg-eval)
PIPELINE = names("base", "report", without=("drafts-sampled", "val-c", "sg", "sg-eval"))
# make kfold, per fold (its data made by kfold): up to B's drafts, each phase C candidate, the chosen one's rest
KFOLD_PREP = names("sft", "drafts", without=("drafts-sampled",))
KFOLD_CANDIDATE = names("pairs", "val-c")
KFOLD_FINAL = names("drafts-c", "report")
# stages that need only earlier stages, not each other: run_stages --jobs N runs them side by side
SIBLINGS = (names("eval", "quality"),)


def help_texts(makefile=REPO_ROOT / "Makefile"):
    """{target: its `## text`} from the Makefile's `target: ... ## text` lines (what `make help` lists)."""
    found = re.findall(r"^([a-z][a-zA-Z_-]*):.*?## (.*)$", Path(makefile).read_text(encoding="utf-8"), re.M)
    return dict(found)


def _link(path, text=None):
    return f"[{text or Path(path).name}]({path})"


def _task_link(name):
    return _link(f"{TASK_DIR}/{name}.yaml", name)


def stage_table():
    """README.md's pipeline table: a row per stage, one link to each recipe, template, tool and task."""
    what = help_texts()
    rows = ["| stage (`make help`) | what | recipe | prompt template | command (tool) | lm-eval tasks | writes |",
            "|---|---|---|---|---|---|---|"]
    for s in STAGES:
        cells = [s.name, what.get(s.name, "").replace("|", "\\|"), _link(s.recipe) if s.recipe else "",
                 ", ".join(_link(t) for t in s.templates),
                 ", ".join(_link(c.tool, f"`{c.text}`") if c.tool else f"`{c.text}`" for c in s.commands),
                 ", ".join(_task_link(t) for t in s.eval_tasks), ", ".join(f"`{o}`" for o in s.outputs)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
