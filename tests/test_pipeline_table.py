"""The stage table (tools/askdraft/pipeline.py) against what make really runs: the Makefile's rule
database (`make -pq`) and dry runs (`make -n -B`). Every stage is a make target and every make
target a stage (or named below as not one); its prerequisites, the files it writes, the commands
and lm-eval tasks its recipe runs match the table; every recipe, template, tool and task it names
exists; the Makefile's task lists and the group YAMLs list the table's tasks."""
import functools
import itertools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from askdraft import pipeline  # noqa: E402
from askdraft.pipeline import STAGES, TASK_GROUPS  # noqa: E402

MAKE_VARS = ("PY=python3", "PROFILE=cpu")  # PROFILE=cpu: phase B's eval includes strategyqa_cot
DEFAULTS = {"<BASE_NAME>": "SmolLM2-135M-Instruct", "<MODEL_NAME>": "SmolLM2-135M-Instruct"}
# phony targets that are not stages: they run stages (pipeline, kfold), tests, benchmarks, or a phase on several GPUs
NOT_STAGES = {"help", "setup", "test", "test-fast", "fault-test", "pipeline", "kfold", "clean-runs", "bench",
              "multi-gpu-bench", "speed-study", "phase-b-multi", "phase-c-multi"}
# the Makefile's task-list variables -> the table's task group each spells out
TASK_VARIABLES = {"ABLATION_TASKS": "strategyqa_ablations", "ORACLE_TASKS": "strategyqa_oracle",
                  "ANSWERED_TASKS": "strategyqa_answered"}
PAIR_MODES = ("draft", "quality")  # pairs reads B's drafts, or with PAIR_MODE=quality the two sampled sets


def make_database(*make_vars):
    """(variables, rules, pattern rules, phony targets) of `make -pq` in the repo."""
    out = subprocess.run(["make", "-pq", "-r", "--no-print-directory", *MAKE_VARS, *make_vars], cwd=REPO,
                         capture_output=True, text=True).stdout
    assert "\n# Files\n" in out, "make -pq printed no rule database"
    head, files = out.split("\n# Files\n", 1)
    variables = dict(re.findall(r"^([A-Za-z_]+) :?= (.*)$", head.split("\n# Implicit Rules\n")[0], re.M))

    def rules(section):
        found = {}
        for target, prereqs in re.findall(r"^([^#\t\s][^:=]*?):(?![=:])(.*)$", section, re.M):
            normal, _, order_only = prereqs.partition("|")
            old = found.get(target, ((), ()))
            found[target] = (old[0] + tuple(normal.split()), old[1] + tuple(order_only.split()))
        return found
    explicit = rules(files.split("\n# files hash-table stats")[0])
    patterns = rules(head.split("\n# Implicit Rules\n")[1])
    return variables, explicit, patterns, set(explicit.pop(".PHONY")[0])


def prerequisites(target, explicit, patterns):
    """The target's prerequisites (normal and order-only), with those of the pattern rules it matches."""
    normal, order_only = explicit.get(target, ((), ()))
    found = list(normal + order_only)
    for pattern, (p_normal, p_order) in patterns.items():
        m = re.fullmatch(re.escape(pattern).replace("%", "(.+)"), target)
        if m:
            found += [p.replace("%", m.group(1)) for p in p_normal + p_order]
    return found


def stage_edges(*make_vars):
    """{stage: the stages its make target depends on}, through the files it makes and their rules."""
    _, explicit, patterns, phony = make_database(*make_vars)
    stages = {s.name for s in STAGES}
    made_by = {f: t for t in stages & phony for f in explicit[t][0] if f not in phony}  # a stage's own files

    def stages_behind(name, seen):
        if name in seen:
            return set()
        seen.add(name)
        if name in phony:
            return {name} if name in stages else set()
        if name in made_by:
            return {made_by[name]}
        return set().union(*(stages_behind(p, seen) for p in prerequisites(name, explicit, patterns)))
    edges = {}
    for stage in stages & phony:
        seen = {stage}
        edges[stage] = set().union(*(stages_behind(p, seen) if p in phony else
                                     set().union(*(stages_behind(q, seen) for q in prerequisites(p, explicit, patterns)))
                                     for p in prerequisites(stage, explicit, patterns)))
    return edges, {t: [f for f in explicit[t][0] if f not in phony] for t in stages & phony}


def expand(path):
    """A table path for the default run: placeholders filled, each {a,b} set spelled out."""
    for key, value in DEFAULTS.items():
        path = path.replace(key, value)
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def covers(output, path):
    return output == path or (output.endswith("/") and path.startswith(output)) or \
        (path.endswith("/") and output.startswith(path))


def planned(*targets):
    """The command lines `make -n -B TARGETS` prints, continuations joined, the pipeline's
    interpreter written as a user types it (askdraft ..., axolotl ..., python ...)."""
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", *targets, *MAKE_VARS], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = out.replace("\\\n", " ").splitlines()
    return [" ".join(line.replace("python3 -m askdraft.cli ", "askdraft ").replace("python3 -m axolotl.cli.main ", "axolotl ")
                     .replace("python3 ", "python ").split()) for line in lines if line.strip()]


@functools.cache
def own_lines(stage):
    """The lines of the stage's own make recipes: its dry run less that of the stages it needs."""
    mine = Counter(planned(stage.name))
    if stage.needs:
        mine -= Counter(planned(*stage.needs))
    return list(mine.elements())


def test_every_make_stage_is_in_the_table_and_back():
    _, _, _, phony = make_database()
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    assert not set(names) - phony, f"table stages that are not make targets: {set(names) - phony}"
    assert not phony - NOT_STAGES - set(names), \
        f"make targets missing from the stage table (tools/askdraft/pipeline.py): {phony - NOT_STAGES - set(names)}"


def test_needs_match_the_makefile_prerequisites():
    union = {s.name: set() for s in STAGES}
    for mode in PAIR_MODES:
        edges, _ = stage_edges(f"PAIR_MODE={mode}")
        for name, needs in edges.items():
            union[name] |= needs
    assert union["pairs"] == {"drafts", "drafts-sampled"}  # the resolution through files and pattern rules works
    assert {s.name: set(s.needs) for s in STAGES} == union
    order = [s.name for s in STAGES]
    for s in STAGES:  # the table is in pipeline order: what a stage needs comes before it
        assert all(order.index(n) < order.index(s.name) for n in s.needs), s.name


def test_outputs_and_inputs_match_the_files_make_builds():
    _, files = stage_edges()
    by_name = {s.name: s for s in STAGES}
    for s in STAGES:
        outputs = [o for out in s.outputs for o in expand(out)]
        for f in files[s.name]:
            assert any(covers(o, f) for o in outputs), \
                f"{s.name}: make builds {f}, which no output of the table's row names"
    for s in STAGES:
        upstream, todo = set(), list(s.needs)
        while todo:
            name = todo.pop()
            if name not in upstream:
                upstream.add(name)
                todo += by_name[name].needs
        for path in (p for i in s.inputs for p in expand(i)):
            makers = [t.name for t in STAGES if any(covers(o, path) for out in t.outputs for o in expand(out))]
            if makers:
                assert set(makers) & upstream, f"{s.name} reads {path}, made by {makers}, none of which it needs"
            else:
                assert (REPO / path).exists(), f"{s.name} reads {path}: no stage makes it and the repo has none"


def test_commands_are_what_the_make_recipes_run():
    for s in STAGES:
        lines = own_lines(s)
        texts = [c.text for c in s.commands]
        rest = iter(lines)  # the table's commands, in the recipe's order
        for text in texts:
            assert any(re.search(rf"(^|\s){re.escape(text)}(\s|$)", line) for line in rest), \
                f"{s.name}: `{text}` is not run by its make recipe (in the table's order): {lines}"
        for line in lines:  # and each line the recipe runs through the pipeline's Python is in the table
            if line.split()[0] in ("askdraft", "axolotl", "python"):
                assert " ".join(line.split()[:2]) in texts, f"{s.name}: the table has no command for: {line}"


def test_eval_tasks_are_what_the_make_recipes_score():
    for s in STAGES:
        scored = {t for line in own_lines(s) for m in re.finditer(r"--tasks (\S+)", line) for t in m.group(1).split(",") if t}
        assert scored == set(pipeline.tasks(*s.eval_tasks)), s.name
    assert set(pipeline.tasks(*pipeline.BY_NAME["eval"].eval_tasks)) >= {t for g in TASK_GROUPS.values() for t in g.values()}


def task_names():
    """{name: file} of every task and group under lm_eval_tasks/."""
    found = {}
    for path in (REPO / "lm_eval_tasks").rglob("*.yaml"):
        for name in re.findall(r"^(?:task|group): (\S+)$", path.read_text(encoding="utf-8"), re.M):
            found[name] = path.relative_to(REPO).as_posix()
    return found


def test_named_files_and_tasks_exist():
    known = task_names()
    for s in STAGES:
        paths = [p for p in (s.recipe, *s.templates, *(c.tool for c in s.commands)) if p]
        assert all((REPO / p).exists() for p in paths), (s.name, [p for p in paths if not (REPO / p).exists()])
        assert all(t.startswith(("recipes/", "prompt_templates/")) for t in (s.recipe, *s.templates) if t)
        for task in {*s.eval_tasks, *pipeline.tasks(*s.eval_tasks)}:
            assert known.get(task) == f"{pipeline.TASK_DIR}/{task}.yaml", f"{s.name}: no lm-eval task {task}"


@pytest.mark.parametrize("group", TASK_GROUPS)
def test_group_yamls_list_the_tables_tasks(group):
    doc = yaml.safe_load((REPO / pipeline.TASK_DIR / f"{group}.yaml").read_text(encoding="utf-8"))
    assert doc["group"] == group and doc["task"] == list(TASK_GROUPS[group].values())


def test_makefile_task_lists_are_the_tables():
    variables, *_ = make_database()
    assert {v for v in variables if v.endswith("_TASKS")} == set(TASK_VARIABLES)
    for var, group in TASK_VARIABLES.items():
        assert variables[var].split(",") == list(TASK_GROUPS[group].values()), var


def test_consumers_read_the_table():
    import run_stages
    from askdraft import evaluate, kfold

    assert run_stages.PIPELINE is pipeline.PIPELINE and run_stages.SIBLINGS is pipeline.SIBLINGS
    assert kfold.KFOLD_FINAL is pipeline.KFOLD_FINAL
    assert [*evaluate.ABLATIONS.values(), evaluate.NOCONCLUSION] == list(TASK_GROUPS["strategyqa_ablations"].values())
    assert evaluate.ORACLE is TASK_GROUPS["strategyqa_oracle"] and evaluate.ANSWERED is TASK_GROUPS["strategyqa_answered"]
    assert set(pipeline.PIPELINE) | {"data", "drafts-sampled", "val-c", "sg", "sg-eval"} == {s.name for s in STAGES}
    help_texts = pipeline.help_texts()
    assert all(help_texts.get(s.name) for s in STAGES), "a stage without a `## ` line in the Makefile (make help)"
