"""The docs and the layout they describe: README.md stays short, results/README.md indexes every
results folder, the plugin's config reference matches args.py, data/samples/README.md names the
files that are there, and no stage module imports the CLI back.

Which test covers which README command is listed in README_COMMANDS below."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "plugins"))
import doc_tables  # noqa: E402  (tools/doc_tables.py)

README_MAX_LINES = 150
# Every command README.md shows -> the test that runs it. `make ...` lines are also expanded by
# make itself (`make -n`) in test_readme_make_commands_expand.
README_COMMANDS = {
    "make test": ".ci/run (CI runs `make test`)",
    "make test-fast": "tests/test_docs.py::test_readme_make_commands_expand (its pytest line is make test's minus -m)",
    "make setup": ".ci/run (`make test` sets up first)",
    "make help": "tests/test_makefile.py::test_help_lists_targets_and_variables",
    "make bench": "tests/test_bench.py::test_bench_phases_b_and_c_through_axolotl (askdraft bench train on a tiny Llama)",
    "make pipeline": "tests/test_run_stages.py::test_stages_in_process_skip_and_fail (the runner behind it); "
                     "tests/test_makefile.py::test_variant_keeps_its_own_files (PAIR_MODE, C_VARIANT, C_PROFILES), "
                     "::test_dpo_fast_profile_goes_to_phase_c_only (PROFILE=gpu-fast, smoke)",
    "make data": "tests/test_data.py::test_embedded_bigbench_source (askdraft data)",
    "make data base": "tests/test_data.py::test_embedded_bigbench_source; tests/conftest.py smollm2_dir "
                      "(base_model.build('embedded'), what askdraft base-model runs)",
    "make base": "tests/test_makefile.py::test_base_needs_a_source_for_another_model; tests/conftest.py "
                 "smollm2_dir (base_model.build('embedded'), what askdraft base-model runs)",
    "make phase-a phase-b": "tests/test_phases_ab.py::test_phase_a_and_b_train_and_save",
    "make merge-b": "tests/test_makefile.py::test_default_phase_c_paths (expanded); merge-lora: "
                    "tests/test_iterate_dpo.py::test_one_sg_round",
    "make drafts": "tests/test_drafts_pairs.py::test_drafts_generate_resume_and_skip",
    "make pairs": "tests/test_makefile.py::test_default_phase_c_paths (expanded: askdraft pairs -o data/pairs.jsonl)",
    "make drafts-c": "tests/test_makefile.py::test_variant_keeps_its_own_files (C's dev drafts, expanded)",
    "make val-c": "tests/test_kfold.py::test_fold_folder_runs_the_repo_makefile_on_its_own_files (expanded)",
    "askdraft drafts": "tests/test_drafts_pairs.py::test_drafts_generate_resume_and_skip",
    "askdraft pairs": "tests/test_drafts_pairs.py::test_pairs_flip_rule",
    "axolotl merge-lora": "tests/test_iterate_dpo.py::test_one_sg_round (merge-lora of an adapter)",
    "askdraft answer-drafts": "tests/test_answerer.py::test_answer_drafts_command_writes_rows_and_report",
    "make sg": "tests/test_iterate_dpo.py::test_one_sg_round; tests/test_makefile.py::test_variant_reaches_sg_and_multi_gpu",
    "make eval attribution judge": "tests/test_evaluate.py::test_evaluate_per_question_files_match_lm_eval_cli, "
                                   "tests/test_attribution.py::test_cli_end_to_end, "
                                   "tests/test_judge.py::test_serve_option_runs_transformers_serve_for_the_run_only",
    "make judge": "tests/test_judge.py::test_batch_outcomes_win_rate_and_cache",
    "make fault-test": "tests/test_faults.py::test_stage_survives_a_kill",
    "make report": "tests/test_evaluate.py::test_report_and_notebook_on_real_results",
    "make kfold": "tests/test_kfold.py::test_fold_folder_runs_the_repo_makefile_on_its_own_files (a fold's targets), "
                  "::test_pool_concatenates_folds_and_recomputes_the_statistics (the pooling)",
    "axolotl train recipes/phase_a.yaml": "tests/test_phases_ab.py::test_phase_a_and_b_train_and_save",
    "axolotl train recipes/phase_b.yaml": "tests/test_phases_ab.py::test_phase_b_starts_from_phase_a_adapter",
    "axolotl train recipes/phase_c.yaml": "tests/test_phase_c_axolotl.py::test_phase_c_recipe_runs_the_schedule",
    "lm_eval --model hf": "tests/test_evaluate.py::test_evaluate_per_question_files_match_lm_eval_cli",
    "python tools/build_dpo_pairs.py": "tests/test_drafts_pairs.py::test_build_dpo_pairs_script_exit_codes",
    "askdraft recipe": "tests/test_run_stages.py::test_stages_in_process_skip_and_fail",
    "askdraft data --source": "tests/test_data.py::test_split_counts_stratified_and_leak_free",
    "askdraft data --teacher explanation": "tests/test_data.py::test_embedded_split_has_question_drafts_from_decompositions "
                                           "(teacher='explanation'); tests/test_records.py (the CLI flag)",
    "askdraft <command>": "tests/test_attribution.py::test_subcommand_registers",
    "askdraft bench": "tests/test_bench_cli.py::test_bench_lists_its_subcommands_and_each_has_help",
    "askdraft question-quality": "tests/test_quality.py::test_question_quality_cli_end_to_end",
    "make pairs": "tests/test_quality.py::test_makefile_plans_quality_pairs",
    # the commands column of the pipeline table (tools/askdraft/pipeline.py)
    "askdraft data": "tests/test_data.py::test_embedded_bigbench_source (what askdraft data runs); "
                     "tests/test_faults.py::test_stage_survives_a_kill (the command, killed and rerun)",
    "askdraft base-model": "tests/conftest.py smollm2_dir (base_model.build('embedded'), what askdraft base-model runs)",
    "askdraft sft-data": "tests/test_faults.py::test_stage_survives_a_kill (sft-data, killed and rerun)",
    "axolotl train": "tests/test_phases_ab.py::test_phase_a_and_b_train_and_save; "
                     "tests/test_phase_c_axolotl.py::test_phase_c_recipe_runs_the_schedule",
    "askdraft evaluate": "tests/test_evaluate.py::test_evaluate_per_question_files_match_lm_eval_cli",
    "python tools/attention_tools.py": "tests/test_attribution.py::test_cli_end_to_end",
    "askdraft judge": "tests/test_judge.py::test_batch_outcomes_win_rate_and_cache",
    "python tools/iterate_dpo.py": "tests/test_iterate_dpo.py::test_one_sg_round",
    "askdraft summarize": "tests/test_faults.py::test_stage_survives_a_kill (its report stage); "
                         "tests/test_evaluate.py::test_report_and_notebook_on_real_results",
    "askdraft report": "tests/test_faults.py::test_stage_survives_a_kill (its report stage); "
                         "tests/test_evaluate.py::test_report_and_notebook_on_real_results",
}
COMMAND = re.compile(r"^(make|axolotl|lm_eval|askdraft|python) ")


def readme_commands(text):
    """Commands in README.md: indented code lines (continuations joined, comments cut) and inline
    `code` spans that start like a command."""
    cmds, lines = [], iter(text.splitlines())
    for line in lines:
        if line.startswith("    ") and COMMAND.match(line.strip()):
            cmd = line.strip()
            while cmd.endswith("\\"):
                cmd = cmd[:-1] + " " + next(lines).strip()
            cmds.append(re.sub(r"\s+#.*$", "", cmd).strip())
    cmds += [" ".join(m.group(1).split()) for m in re.finditer(r"`([^`]+)`", text, re.S)
             if COMMAND.match(" ".join(m.group(1).split()))]
    return cmds


def covering_test(cmd):
    prefixes = [p for p in README_COMMANDS if cmd == p or cmd.startswith(p + " ")]
    return README_COMMANDS[max(prefixes, key=len)] if prefixes else None


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move details to a page of its own"


def test_every_readme_command_has_a_test():
    cmds = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(cmds) > 20
    uncovered = [c for c in cmds if covering_test(c) is None]
    assert not uncovered, f"README commands no test covers (add them to README_COMMANDS): {uncovered}"
    for where in README_COMMANDS.values():  # the named tests exist
        for node in re.findall(r"(tests/\w+\.py)::(\w+)", where):
            assert f"def {node[1]}(" in (REPO / node[0]).read_text(encoding="utf-8"), node


def test_readme_make_commands_expand():
    """make itself expands every `make ...` command of the README (a dry run)."""
    for cmd in sorted({c for c in readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
                       if c.startswith("make ")}):
        r = subprocess.run(["make", "-n", "--no-print-directory", *cmd.split()[1:]], cwd=REPO,
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"


USER_DOCS = ("README.md", "recipes/README.md", "recipes/multi_gpu/README.md", "results/README.md",
             "results/performance.md", "plugins/askdraft_dpo/README.md", "lm_eval_tasks/strategyqa/README.md",
             "data/samples/README.md", "data/strategyqa/README.md")


def test_user_docs_speak_of_the_project_not_its_issues():
    """The docs say what is true now: no issue numbers, in the pages nor in the tools' docstrings
    (their --help) or the recipes' comments."""
    pages = [REPO / p for p in USER_DOCS] + sorted((REPO / "tools").rglob("*.py")) + \
        sorted((REPO / "plugins").rglob("*.py")) + sorted((REPO / "recipes").rglob("*.yaml")) + [REPO / "Makefile"]
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in pages
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bissues?\s*#?\d+", line, re.I)]
    assert not found, "issue numbers in user docs (say what is true now instead):\n" + "\n".join(found)


def test_no_module_imports_the_cli():
    """cli.py imports every stage module; a stage module importing cli back would be a circle."""
    offenders = []
    for path in sorted((REPO / "tools/askdraft").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     and node.module else [])
            if any(n == "askdraft.cli" or n.startswith("askdraft.cli.") for n in names):
                offenders.append(path.name)
    assert not offenders, f"these modules import askdraft.cli: {offenders}"


# ---------------------------------------------------------------- results/

def test_generated_tables_are_current():
    """results/README.md's runs table and the plugin README's recipe keys (from args.py)."""
    assert not doc_tables.stale_pages(), "run python tools/doc_tables.py"


def test_every_plugin_key_has_a_description_and_a_row():
    args = doc_tables.load_args()
    readme = (REPO / "plugins/askdraft_dpo/README.md").read_text(encoding="utf-8")
    for model in (args.AskDraftDPOArgs, args.ScheduleEntry):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}: add Field(description=...)"
            assert f"| `{name}` |" in readme, name


def test_results_readme_names_every_results_entry():
    readme = (REPO / "results/README.md").read_text(encoding="utf-8")
    entries = [p for p in (REPO / "results").iterdir()
               if p.name not in ("README.md", "performance.md") and not p.name.endswith("-smoke")]
    missing = [p.name for p in entries if f"`{p.name}{'/' if p.is_dir() else ''}" not in readme]
    assert not missing, f"results/README.md does not mention: {missing}"
    for folder in doc_tables.run_folders():  # and each run folder has its row and its note
        assert readme.count(f"`{folder.name}/`") >= 3, folder.name


def test_run_folder_names_say_what_differs():
    names = [f.name for f in doc_tables.run_folders()]
    assert names and all(doc_tables.NAME.match(n) for n in names)


def test_notebook_default_is_a_committed_run():
    nb = json.loads((REPO / "DPO_eval.ipynb").read_text(encoding="utf-8"))
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    default = re.search(r'os.environ.get\("ASKDRAFT_MODEL", "([^"]+)"\)', code).group(1)
    assert (REPO / "results" / default / "summary.json").is_file()


def test_doc_links_point_to_existing_files():
    for page in ("README.md", "results/README.md", "results/performance.md", "recipes/README.md",
                 "plugins/askdraft_dpo/README.md", "lm_eval_tasks/strategyqa/README.md", "data/samples/README.md"):
        text = (REPO / page).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (REPO / page).parent.joinpath(target).exists(), f"{page}: broken link {target}"


def test_samples_readme_describes_what_is_there():
    folder = REPO / "data/samples"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in folder.iterdir() if p.name != "README.md")
    listed = sorted(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    assert listed == files
    from askdraft.io import sha256_file
    report = json.loads((folder / "pairs_sample.report.json").read_text(encoding="utf-8"))
    assert report["drafts_sha256"] == sha256_file(folder / "drafts_sample.jsonl")
    assert report["out_sha256"] == sha256_file(folder / "pairs_sample.jsonl")
    assert report["pairs"] == len((folder / "pairs_sample.jsonl").read_text(encoding="utf-8").splitlines())
