"""The Makefile's phase C variants, as make itself expands them (`make -n`), and the recipe they
compose: a variant never touches the default phase C's files, and `askdraft recipe --set`
reaches into the datasets list."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "plugins"))
from askdraft.io import InputError  # noqa: E402
from askdraft.recipe import compose  # noqa: E402
from askdraft_dpo.args import AskDraftDPOArgs  # noqa: E402


def planned(*make_vars):
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "report", "PY=python3", "PROFILE=cpu", *make_vars],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out


def test_default_phase_c_paths():
    out = planned()
    assert "-o data/pairs.jsonl" in out and "--set output_dir=models/dpo_phaseC " in out
    assert "--name dpo_phaseC " in out and "summarize --model-name SmolLM2-135M-Instruct\n" in out
    assert "published-losses" not in out


def test_variant_keeps_its_own_files():
    out = planned("C_VARIANT=published", "C_PROFILES=published-losses", "PAIR_MODE=answer")
    assert "pairs --mode answer" in out and "-o data/pairs-published.jsonl" in out
    assert ("--set datasets.0.path=data/pairs-published.jsonl --set output_dir=models/dpo_phaseC-published "
            "--profile dpo-fast --profile published-losses -o runs/cpu/phase_c-published.yaml") in out
    assert "--adapter models/dpo_phaseC-published --drafts data/drafts/dpo_phaseC-published/dev.jsonl" in out
    assert "summarize --model-name SmolLM2-135M-Instruct-published" in out
    assert "data/pairs.jsonl" not in out and "models/dpo_phaseC " not in out


def test_published_losses_profile_composes_and_validates():
    cfg = compose(REPO / "recipes/phase_c.yaml", ["cpu", "published-losses"],
                  ["datasets.0.path=data/pairs-published.jsonl", "output_dir=models/dpo_phaseC-published"])
    assert cfg["datasets"][0]["path"] == "data/pairs-published.jsonl"
    assert cfg["datasets"][0]["type"]["field_chosen"] == "chosen"  # the rest of the entry is kept
    args = AskDraftDPOArgs(**{k: v for k, v in cfg.items() if k.startswith("askdraft_")})
    assert [(e.cal, e.robust) for e in args.askdraft_schedule] == [("none", "none"), ("published", "none"),
                                                                    ("none", "published")]
    # the profile changes those two fields only: epochs and betas are the recipe's, written once
    base = compose(REPO / "recipes/phase_c.yaml")["askdraft_schedule"]
    assert [{k: v for k, v in e.items() if k not in ("cal", "robust")} for e in cfg["askdraft_schedule"]] == \
        [{k: v for k, v in e.items() if k not in ("cal", "robust")} for e in base]


def test_profile_dotted_key_errors_name_the_profile(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("askdraft_schedule.7.cal: published\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(bad))}: key askdraft_schedule.7.cal: askdraft_schedule "
                                         "has no item '7'"):
        compose(REPO / "recipes/phase_c.yaml", [bad])


@pytest.mark.parametrize("plugin", ["askdraft_sed.SeedPlugin", "askdraft_dpo_plugin.Missing", "SeedPlugin"])
def test_a_plugin_that_cannot_be_imported_stops_the_recipe(tmp_path, plugin):
    """Axolotl itself logs such a plugin and trains without it."""
    bad = tmp_path / "plugins.yaml"
    bad.write_text(f"plugins:\n  - askdraft_fastprep.FastPrepPlugin\n  - {plugin}\n")
    with pytest.raises(InputError, match=rf"phase_a.yaml: plugin '{re.escape(plugin)}': no module"):
        compose(REPO / "recipes/phase_a.yaml", [bad])
    assert compose(REPO / "recipes/phase_a.yaml")["plugins"]  # the recipe's own plugins import


@pytest.mark.parametrize("profiles, loss, entry", [
    ([], "robust", {"epochs": [1, 1], "beta": 0.10, "cal": "none", "robust": "seed"}),
    ([], "cal", {"epochs": [1, 1], "beta": 0.10, "cal": "seed", "robust": "none"}),
    ([], "plain", {"epochs": [1, 1], "beta": 0.10, "cal": "none", "robust": "none"}),
    (["published-losses"], "robust", {"epochs": [1, 1], "beta": 0.10, "cal": "none", "robust": "published"}),
])
def test_sg_loop_takes_its_epoch_from_the_recipes_schedule(profiles, loss, entry):
    sys.path.insert(0, str(REPO / "tools"))
    from iterate_dpo import one_epoch_entry

    cfg = compose(REPO / "recipes/phase_c.yaml", profiles)
    assert one_epoch_entry(cfg["askdraft_schedule"], loss, "phase_c.yaml") == entry
    with pytest.raises(InputError, match="no askdraft_schedule entry has cal on"):
        one_epoch_entry([{"epochs": [1, 1], "beta": 0.1}], "cal", "phase_c.yaml")


@pytest.mark.parametrize("override, msg", [
    ("datasets.3.path=x", "datasets has no item '3'"),
    ("output_dir.sub=x", "output_dir is not a mapping or list"),
])
def test_bad_dotted_override(override, msg):
    with pytest.raises(InputError, match=msg):
        compose(REPO / "recipes/phase_c.yaml", [], [override])


@pytest.mark.parametrize("profile, fast", [("gpu-fast", True), ("smoke", True), ("cpu", True), ("gpu", False)])
def test_dpo_fast_profile_goes_to_phase_c_only(profile, fast):
    out = planned(f"PROFILE={profile}", "C_VARIANT=published", "C_PROFILES=published-losses")
    recipes = [line for line in out.splitlines() if " recipe recipes/" in line]
    phase_c = [line for line in recipes if "recipes/phase_c.yaml" in line]
    expected = "--profile dpo-fast --profile published-losses" if fast else "--profile published-losses"
    assert phase_c and all(expected in line for line in phase_c)
    assert not any("dpo-fast" in line for line in recipes if line not in phase_c)
    if profile == "gpu-fast":
        assert all("--profile gpu-fast " in line for line in recipes)
    cfg = compose(REPO / "recipes/phase_c.yaml", ["gpu-fast", "dpo-fast"])
    args = AskDraftDPOArgs(**{k: v for k, v in cfg.items() if k.startswith("askdraft_")})
    assert args.askdraft_free_memory_each_step is False and args.askdraft_cudnn_attention is False


def test_set_values_use_yaml_1_2_booleans(tmp_path):
    import yaml

    from askdraft.recipe import write
    cfg = compose(REPO / "recipes/phase_c.yaml", [], ["save_strategy=no", "bf16=false", "gradient_checkpointing=True",
                                                      "lr_scheduler=on", "learning_rate=5.0e-6"])
    assert cfg["save_strategy"] == "no" and cfg["lr_scheduler"] == "on"
    assert cfg["bf16"] is False and cfg["gradient_checkpointing"] is True and cfg["learning_rate"] == 5e-6
    write(cfg, tmp_path / "r.yaml", "recipes/phase_c.yaml")  # what axolotl then reads (YAML 1.1)
    back = yaml.safe_load((tmp_path / "r.yaml").read_text())
    assert back["save_strategy"] == "no" and back["bf16"] is False and back["lr_scheduler"] == "on"


def test_judge_failure_exit_codes_in_the_makefile():
    # the judge's exit 1 (some calls failed, results written) lets make go on; 2 (bad input) stops it
    out = planned("JUDGE_URL=http://localhost:1/v1", "JUDGE_MODEL=m")
    line = next(x for x in out.splitlines() if " judge --drafts-a" in x or "judge --drafts-a" in x)
    assert "|| [ $? -eq 1 ]" in out and "|| true" not in line


# ---------------------------------------------------------------- the Makefile itself

def makefile_text():
    return (REPO / "Makefile").read_text(encoding="utf-8")


def test_every_variable_is_declared():
    """Each $(NAME) the Makefile reads is assigned in it (BASE_SRC was not); foreach loop
    variables and make's own variables excepted."""
    import re
    text = makefile_text()
    declared = set(re.findall(r"^(?:export )?([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\?|:)?=", text, re.M))
    loop_vars = set(re.findall(r"\$\(foreach (\w+),", text))
    used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text))
    missing = used - declared - loop_vars - {"MAKEFILE_LIST", "MAKE"}
    assert not missing, f"used but never declared in the Makefile: {sorted(missing)}"


def test_drafts_path_is_spelled_once():
    code = [line for line in makefile_text().splitlines() if not line.lstrip().startswith("#")]
    assert sum(line.count("data/drafts") for line in code) == 1  # DRAFTS_ROOT; the rest use drafts_of


def test_variant_reaches_sg_and_multi_gpu():
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "sg", "phase-c-multi", "PY=python3",
                          "PROFILE=cpu", "C_VARIANT=answer", "PAIR_MODE=answer"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--start-adapter models/dpo_phaseC-answer --out models/dpo_phaseC-answer_sg" in out
    assert "--data-out data/sg-answer --mode answer" in out
    assert "--set datasets.0.path=data/pairs-answer.jsonl --set output_dir=models/dpo_phaseC-answer" in out
    assert "data/pairs.jsonl" not in out and "models/dpo_phaseC " not in out


def test_help_lists_targets_and_variables():
    out = subprocess.run(["make", "--no-print-directory", "help", "PROFILE=smoke"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    phony = makefile_text().split(".PHONY:")[1].splitlines()[0].split()
    for target in phony:
        assert f"make {target} " in out, target
    for var in ("PROFILE", "BASE_SRC", "C_VARIANT", "PAIR_MODE", "JUDGE_URL", "NGPU"):
        assert f"\n  {var} " in out, var
    assert "PROFILE      = smoke" in out


def test_base_needs_a_source_for_another_model():
    r = subprocess.run(["make", "-n", "-B", "base", "PY=python3", "BASE_NAME=Llama-2-7b-hf"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "BASE_SRC" in r.stderr
    out = subprocess.run(["make", "-n", "-B", "base", "PY=python3", "BASE_NAME=Llama-2-7b-hf",
                          "BASE_SRC=meta-llama/Llama-2-7b-hf"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "base-model meta-llama/Llama-2-7b-hf" in out and "--name Llama-2-7b-hf --out-root models/base/" in out


def test_gpu_7b_fast_packs_a_and_b_only():
    out = planned("PROFILE=gpu-7b-fast")
    recipes = [line for line in out.splitlines() if " recipe recipes/" in line]
    ab = [line for line in recipes if "phase_a.yaml" in line or "phase_b.yaml" in line]
    c = [line for line in recipes if "phase_c.yaml" in line]
    assert ab and all("--profile gpu-7b-fast" in line and "--pack-rows 32" in line for line in ab)
    assert c and all("--profile gpu-7b-fast" in line and "--profile dpo-7b-fast" in line and "--pack-rows" not in line
                     for line in c)
    drafts = next(line for line in out.splitlines() if " drafts --base models/cot_phaseB/merged --name cot_phaseB " in line)
    # continuous batching replays its forward passes as CUDA graphs in a 2 GiB cache; eval scores 4 rows a batch
    assert "--batch-size 256 " in drafts and "--load-in-4bit --engine continuous --cache-tokens 4096 --cuda-graphs" in drafts
    evals = [line for line in out.splitlines() if " evaluate " in line]
    assert len(evals) == 4 and all("--batch-size 4 " in line for line in evals)
    cfg = compose(REPO / "recipes/phase_c.yaml", ["gpu-7b-fast", "dpo-7b-fast"])
    assert (cfg["micro_batch_size"], cfg["gradient_accumulation_steps"], cfg["sample_packing"]) == (8, 4, False)


def sft_rows(path, n=40):
    """n short phase-B-shaped SFT rows (input + output segments) at path."""
    path.write_text("".join(f'{{"segments": [{{"label": false, "text": "Question: is {i} odd?\\n"}}, '
                            f'{{"label": true, "text": "{"yes" if i % 2 else "no"}"}}]}}\n' for i in range(n)))
    return path


def test_recipe_command_starts_without_torch_or_transformers(tmp_path, smollm2_dir):
    """`askdraft recipe` runs before every training stage: it imports only its own module, and
    --pack-rows counts tokens without transformers (both cost seconds a stage at 7B's host)."""
    rows = sft_rows(tmp_path / "rows.jsonl")
    code = ("import sys; from askdraft import cli; "
            f"rc = cli.main(['recipe', 'recipes/phase_b.yaml', '--profile', 'gpu-7b-fast', '--set', 'base_model={smollm2_dir}', "
            f"'--set', 'datasets.0.path={rows}', '--pack-rows', '32', '-o', '{tmp_path / 'b.yaml'}']); "
            "print(rc, sorted(m for m in ('torch', 'transformers', 'scipy', 'openai') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stderr
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())["sample_packing"] is True


def test_every_command_is_listed_with_its_module():
    """askdraft.cli imports only the named command's module: each module's commands are in COMMANDS."""
    import argparse
    import importlib
    from askdraft import cli
    for module in set(cli.COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"askdraft.{module}").add_cli(sub)
        assert {name: cli.COMMANDS.get(name) for name in sub.choices} == {name: module for name in sub.choices}


def test_pack_rows_sizes_packs_from_the_data(tmp_path, smollm2_dir):
    """One pack of 32 rows a step: sequence_len from the rows' mean tokens (the model's tokenizer)."""
    from askdraft.bench.inputs import mean_tokens
    rows = sft_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "b.yaml"
    subprocess.run([sys.executable, "-m", "askdraft.cli", "recipe", "recipes/phase_b.yaml", "--profile", "gpu-7b-fast",
                    "--set", f"base_model={smollm2_dir}", "--set", f"datasets.0.path={rows}", "--pack-rows", "32",
                    "-o", str(out)], cwd=REPO, check=True, capture_output=True)
    cfg = yaml.safe_load(out.read_text())
    mean = mean_tokens(rows, smollm2_dir, "B")
    assert 5 < mean < 20
    assert cfg["sequence_len"] == max(128, 64 * math.ceil(32 * mean / 64))
    assert (cfg["micro_batch_size"], cfg["gradient_accumulation_steps"], cfg["sample_packing"]) == (1, 1, True)
    bad = subprocess.run([sys.executable, "-m", "askdraft.cli", "recipe", "recipes/phase_b.yaml", "--pack-rows", "32",
                          "--set", f"base_model={smollm2_dir}", "-o", str(tmp_path / "x.yaml")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "sample_packing" in bad.stderr and not (tmp_path / "x.yaml").exists()
