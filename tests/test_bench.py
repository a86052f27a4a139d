"""`askdraft bench train` (tools/askdraft/bench/train.py, train_stats.py): its accounting by hand,
and phases B and C through the real `axolotl train` (a process a row) on a tiny Llama on CPU."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from askdraft import cli
from askdraft.bench import train, train_stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # doc_tables (tools/doc_tables.py)

ROW_FIELDS = {"phase", "config", "switches", "recipe", "model", "device", "commit", "date", "timed_steps",
              "warmup_steps", "step_s", "useful_tokens_per_s", "padding_fraction", "peak_reserved_gib",
              "peak_allocated_gib", "mfu", "peak_flops", "flops_per_useful_token", "flop_basis", "final_loss"}


def test_percentiles_by_hand():
    xs = [4.0, 1.0, 3.0, 2.0, 10.0]
    assert train_stats.percentile(xs, 50) == 3.0
    assert train_stats.percentile(xs, 90) == pytest.approx(4.0 + 0.6 * 6.0)   # rank 3.6 of 0..4
    assert train_stats.percentile(xs, 0) == 1.0 and train_stats.percentile(xs, 100) == 10.0
    assert train_stats.percentile([7.0], 90) == 7.0


def test_step_stats_skip_warmup_and_count_two_ways():
    steps = [{"s": 9.0, "useful": 1, "total": 2, "rows": 1, "loss": 5.0},
             {"s": 2.0, "useful": 100, "total": 200, "rows": 32, "loss": 4.0},
             {"s": 1.0, "useful": 60, "total": 80, "rows": 32, "loss": 3.0},
             {"s": 4.0, "useful": 200, "total": 200, "rows": 32}]
    s = train_stats.step_stats(steps, warmup=1)
    assert s["timed_steps"] == 3 and s["warmup_steps"] == 1
    assert s["step_s"] == {"median": 2.0, "p90": pytest.approx(3.6), "min": 1.0, "max": 4.0}
    assert s["useful_tokens_per_s"] == 50.0                     # median of 50, 60, 50
    assert s["useful_tokens_per_s_overall"] == pytest.approx(360 / 7)
    assert s["padding_fraction"] == pytest.approx(1 - 360 / 480)
    assert s["final_loss"] == 3.0
    with pytest.raises(RuntimeError, match="no timed steps"):
        train_stats.step_stats(steps[:1], warmup=1)


def test_flops_and_peaks():
    llama2 = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
    n_base = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    assert train_stats.base_params(llama2) == n_base and n_base == pytest.approx(6.607e9, rel=1e-3)
    gqa = dict(llama2, num_key_value_heads=8)                   # k and v shrink 4x
    assert train_stats.base_params(gqa) == n_base - 32 * 2 * 4096 * (4096 - 1024)
    assert train_stats.flops_per_useful_token(100, 10, ref_forward=False) == 460
    assert train_stats.flops_per_useful_token(100, 10, ref_forward=True) == 460 + 220
    assert train_stats.peak_flops("NVIDIA H200") == 989e12 and train_stats.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert train_stats.peak_flops("cpu") is None


def test_padding_text_says_what_one_row_a_pair_ran():
    row = {"padding_fraction": 0.38, "total_tokens": 1000, "model_positions": None}
    assert train_stats.padding_text(row) == "38 %"
    assert train_stats.padding_text(dict(row, model_positions=999.8)) == "38 %"  # two rows a pair, a float mean
    assert train_stats.padding_text(dict(row, model_positions=455)) == "38 % (one row a pair: 46 % of those positions run)"


def test_plan():
    rows = train.plan(["A", "B", "C"], ablate=True)
    assert rows[:6] == [(p, c) for c in ("plain", "tuned") for p in "ABC"]
    assert rows[6:12] == [("B", f"tuned-minus-{s}") for s in train.ABLATIONS]
    assert rows[12:] == [("B", "tuned-pack16"), ("C", "tuned-micro4"), ("C", "tuned-micro16"),
                         ("C", "tuned-minus-shared_prompt")]
    assert train.plan(["C"], ablate=True) == [("C", "plain"), ("C", "tuned"), ("C", "tuned-micro4"), ("C", "tuned-micro16"),
                                              ("C", "tuned-minus-shared_prompt")]
    assert train.plan(["C"], ablate=False) == [("C", "plain"), ("C", "tuned")]
    assert train.plan(["B"], ablate=True, configs=["plain"]) == [("B", "plain")]
    # one-switch rows by name, each on its own phase only
    assert train.plan(["B", "C"], ablate=False, configs=["tuned-micro8", "tuned-minus-liger", "tuned-compile"]) == [
        ("C", "tuned-micro8"), ("B", "tuned-minus-liger"), ("B", "tuned-compile")]
    assert train.plan(["C"], ablate=False, configs=["tuned-pack32"]) == []
    for bad in ("tuned-minus-warp", "tuned-microx", "fast", "tuned-compile2", "shared_prompt"):
        with pytest.raises(ValueError, match="unknown row"):
            train.plan(["B"], ablate=False, configs=[bad])


def test_unknown_row_is_a_usage_error(capsys):
    assert cli.main(["bench", "train", "--phases", "B", "--configs", "tuned-minus-warp"]) == 2
    assert "--configs: unknown row 'tuned-minus-warp'" in capsys.readouterr().err


def test_c_micro_rows_keep_32_pairs_a_step(tmp_path):
    ctx = {"profiles": ["cpu"], "model": tmp_path, "warmup": 1, "steps_of": lambda c: 2, "work": tmp_path,
           "data": {"C": tmp_path / "pairs.jsonl"}, "mean_tokens": {"C": 130.0}, "cpu": False}
    tuned = train.row_config("C", "tuned", ctx)
    for micro in train.C_MICRO:
        cfg = train.row_config("C", f"tuned-micro{micro}", ctx)
        assert (cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]) == (micro, 32 // micro)
        assert {k: v for k, v in cfg.items() if k not in ("micro_batch_size", "gradient_accumulation_steps", "output_dir")} \
            == {k: v for k, v in tuned.items() if k not in ("micro_batch_size", "gradient_accumulation_steps", "output_dir")}
    assert tuned["micro_batch_size"] * tuned["gradient_accumulation_steps"] == 32
    # tuned scores a pair in one row, the prompt once; its one-switch row in TRL's two rows a pair
    two_rows = train.row_config("C", "tuned-minus-shared_prompt", ctx)
    assert tuned["askdraft_shared_prompt"] is True and two_rows.pop("askdraft_shared_prompt") is False
    assert {k: v for k, v in two_rows.items() if k != "output_dir"} == \
        {k: v for k, v in tuned.items() if k not in ("output_dir", "askdraft_shared_prompt")}


def test_b_pack_and_compile_rows_change_only_their_switch(tmp_path):
    ctx = {"profiles": ["cpu"], "model": tmp_path, "warmup": 1, "steps_of": lambda c: 2, "work": tmp_path,
           "data": {"B": tmp_path / "b.jsonl"}, "mean_tokens": {"B": 111.0}, "cpu": False}
    tuned = train.row_config("B", "tuned", ctx)
    pack = train.row_config("B", "tuned-pack16", ctx)
    # tuned: 32 rows of ~111 tokens in one pack, one micro-batch a step; pack16: two packs of 16
    assert (tuned["sequence_len"], tuned["micro_batch_size"], tuned["gradient_accumulation_steps"]) == (3584, 1, 1)
    assert (pack["sequence_len"], pack["micro_batch_size"], pack["gradient_accumulation_steps"]) == (1792, 1, 2)
    compiled = train.row_config("B", "tuned-compile", ctx)
    assert compiled.pop("torch_compile") is True and "torch_compile" not in tuned
    drop = ("output_dir", "sequence_len", "gradient_accumulation_steps")
    assert {k: v for k, v in compiled.items() if k != "output_dir"} == {k: v for k, v in tuned.items() if k != "output_dir"}
    assert {k: v for k, v in pack.items() if k not in drop} == {k: v for k, v in tuned.items() if k not in drop}


def test_a_row_raises_in_its_own_process(tmp_path):
    """The row process's exception comes back as the row's error; axolotl never ran here."""
    trained_here = "axolotl.train" in sys.modules
    res = train.train_row(tmp_path / "missing.yaml", threads=1)
    assert list(res) == ["error"] and res["error"].startswith("FileNotFoundError(")
    assert ("axolotl.train" in sys.modules) == trained_here


def test_a_dead_row_process_gives_its_last_stderr_line(tmp_path, monkeypatch, capfd):
    """Killed without writing a row (OOM killer, CUDA abort): the error is its stderr's last line,
    and its progress bars (carriage returns) still reach our stderr."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nprintf 'step 1/4\\rstep 2/4\\nCUDA error: an illegal memory access was "
                      "encountered\\n' >&2\nkill -9 $$\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    res = train.train_row(tmp_path / "any.yaml", threads=1)
    assert res == {"error": "row process exited with -9, no row: CUDA error: an illegal memory access was encountered"}
    assert "step 1/4\rstep 2/4" in capfd.readouterr().err


def test_packing_keeps_32_rows_a_step():
    keys = train.packing_keys("B", mean_tokens=70.3, rows_per_pack=16, base_len=128)
    assert keys == {"sequence_len": 1152, "micro_batch_size": 1, "gradient_accumulation_steps": 2}


def test_merge_replaces_same_key_and_refuses_v1(tmp_path):
    out = tmp_path / "bench.json"
    row = lambda c, run: {"device": "d", "model": {"name": "m"}, "phase": "B", "config": c, "run_id": run}  # noqa: E731
    doc = train.merge(out, "r1", {"x": 1}, [row("plain", "r1"), row("tuned", "r1")])
    out.write_text(json.dumps(doc))
    doc = train.merge(out, "r2", {"x": 2}, [row("tuned", "r2")])
    assert [(r["config"], r["run_id"]) for r in doc["rows"]] == [("plain", "r1"), ("tuned", "r2")]
    assert set(doc["runs"]) == {"r1", "r2"} and doc["schema"] == 2
    out.write_text(json.dumps([row("plain", "old")]))
    with pytest.raises(Exception, match="schema-2"):
        train.merge(out, "r3", {}, [])


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, smollm2_dir):
    """A repo-like dir with data/sft/phase_b.jsonl (64 rows) and a 64-question train_cot split
    (phase C's teacher pairs), and a 2-layer random Llama with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from askdraft import sft_data
    from conftest import strategyqa_split

    root = tmp_path_factory.mktemp("bench")
    model = root / "tiny"
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.save_pretrained(model)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(model)
    split = strategyqa_split()
    data = root / "repo" / "data"
    data.mkdir(parents=True)
    for name in ("strategyqa_train_baseline.jsonl", "strategyqa_train_cot.jsonl", "strategyqa_dev.jsonl"):
        lines = (split / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(lines if "dev" in name else lines[:64]))
    sft_data.build(data, model, out_dir=data / "sft", limit=64)
    return root, model


@pytest.mark.slow
def test_bench_phases_b_and_c_through_axolotl(tiny_repo, one_thread):
    root, model = tiny_repo
    out = root / "bench.json"
    trained_here = "axolotl.train" in sys.modules
    assert cli.main(["bench", "train", "--phases", "B,C", "--steps", "3", "--warmup", "1", "--model", str(model),
                     "--repo", str(root / "repo"), "--work", str(root / "work"), "--out", str(out)]) == 0
    assert ("axolotl.train" in sys.modules) == trained_here   # every row trained in a process of its own
    doc = json.loads(out.read_text())
    assert doc["schema"] == 2 and (root / "bench.png").is_file()
    run = doc["runs"][doc["rows"][0]["run_id"]]
    assert run["versions"]["axolotl"] and run["data"]["C"]["path"].endswith("pairs_teacher.jsonl")
    assert run["command"] == "askdraft bench train" and run["options"]["steps"] == 3
    rows = {(r["phase"], r["config"]): r for r in doc["rows"]}
    assert set(rows) == {("B", "plain"), ("B", "tuned"), ("C", "plain"), ("C", "tuned")}
    for (phase, config), r in rows.items():
        assert "error" not in r, r.get("error")
        assert ROW_FIELDS <= set(r) and r["timed_steps"] == 3 and r["warmup_steps"] == 1
        assert r["useful_tokens_per_s_overall"] == pytest.approx(sum(r["useful_tokens_each"]) / sum(r["step_s_each"]))
        assert r["useful_tokens_per_s"] == pytest.approx(sorted(
            u / s for u, s in zip(r["useful_tokens_each"], r["step_s_each"]))[1])
        assert 0 <= r["padding_fraction"] < 1 and math.isfinite(r["final_loss"])
        assert r["step_s"]["min"] <= r["step_s"]["median"] <= r["step_s"]["p90"] <= r["step_s"]["max"]
        assert r["mfu"] is None and r["device"] == "cpu"
        recipe = root / "work" / "recipes" / f"{phase}-{config}.yaml"
        assert train.hashlib.sha256(recipe.read_bytes()).hexdigest() == r["recipe"]["sha256"]
        assert yaml.safe_load(recipe.read_text())["max_steps"] == 4
    b_plain, b_tuned = rows[("B", "plain")], rows[("B", "tuned")]
    assert b_plain["rows_per_step"] == 32 and b_plain["padding_fraction"] > 0
    assert b_tuned["switches"]["sample_packing"] and b_tuned["switches"]["optimizer"] == "adamw_torch_fused"
    assert 20 <= b_tuned["rows_per_step"] <= 40                 # a pack of ~32 rows a step
    assert "precomputed" in rows[("C", "tuned")]["flop_basis"]
    # tuned C runs a pair as one row (dpo-7b-fast): fewer positions than TRL's two rows a pair
    c_plain, c_tuned = rows[("C", "plain")], rows[("C", "tuned")]
    assert c_tuned["switches"]["askdraft_shared_prompt"] and not c_plain["switches"]["askdraft_shared_prompt"]
    assert c_plain["model_positions"] == pytest.approx(c_plain["total_tokens"], rel=1e-3)
    assert c_tuned["model_positions"] < 0.8 * c_tuned["total_tokens"]
    assert b_tuned["model_positions"] is None  # SFT logs none
    assert "pipeline" not in run  # derived from the rows when read (pipeline_estimate), never stored
    est = train_stats.pipeline_estimate(json.loads(out.read_text()), "cpu", "tiny")
    assert est["tuned"]["stages"]["B"]["optimizer_steps"] == 2 * 3  # 64 rows / 32 x 3 epochs
    import doc_tables  # tools/doc_tables.py: results/performance.md's table from these rows
    table = doc_tables.performance_table(out)
    assert "**tiny on cpu**" in table and "| B | tuned | micro 1 x 1, packed" in table
    assert "| C | tuned | micro 8 x 4, fused AdamW, shared prompt, sdpa |" in table and "one row a pair: " in table


@pytest.mark.slow
def test_bench_profile_times_a_real_run(tiny_repo, tmp_path):
    """`askdraft bench profile` on a bench recipe: axolotl train in process, every stage timed."""
    import subprocess
    root, model = tiny_repo
    ctx = {"profiles": ["cpu"], "model": model, "warmup": 1, "steps_of": lambda c: 3, "work": tmp_path, "cpu": True,
           "data": {"B": root / "repo" / "data" / "sft" / "phase_b.jsonl"}}
    recipe = tmp_path / "b.yaml"
    train.write_recipe(train.row_config("B", "plain", ctx), recipe)
    out = tmp_path / "prof"
    subprocess.run([sys.executable, "-m", "askdraft.cli", "bench", "profile", str(recipe), "--out", str(out),
                    "--steps", "1:2"], check=True, cwd=tmp_path)
    prof = json.loads((out / "profile.json").read_text())
    assert prof["optimizer_steps"] == 4 and prof["device"] == "cpu" and len(prof["step_s"]) == 4
    assert {"load_config", "prepare_dataset", "build_model_and_trainer", "train"} <= set(prof["phases_s"])
    assert prof["profiler_window"]["steps"] == 1 and prof["profiler_window"]["device_kernel_s"] == 0
    assert (out / "ops.txt").read_text().startswith("window: 1 optimizer steps")


def test_profiles_compose(tmp_path):
    from askdraft.recipe import compose
    cfg = compose(train.REPO_ROOT / "recipes/phase_c.yaml", ["gpu-7b-fast", "dpo-7b-fast"])
    assert "askdraft_dpo.AskDraftDPOPlugin" in cfg["plugins"] and not cfg["sample_packing"]
    assert cfg["precompute_ref_log_probs"] is True
    shutil.rmtree(tmp_path)


def test_pipeline_estimate_spans_runs():
    """A later run of phase C alone: the estimate still covers A and B, each with its own run's data."""
    def row(phase, run, s):
        return {"phase": phase, "config": "tuned", "device": "gpu", "model": {"name": "m"}, "run_id": run,
                "step_s": {"median": s}, "peak_reserved_gib": 5.0}
    doc = {"runs": {"r1": {"data": {"A": {"rows": 64}, "B": {"rows": 96}, "C": {"rows": 10}}}, "r2": {"data": {"C": {"rows": 65}}}},
           "rows": [row("A", "r1", 1.0), row("B", "r1", 2.0), row("C", "r2", 3.0), {**row("C", "r2", 9.0), "device": "other"}]}
    est = train_stats.pipeline_estimate(doc, "gpu", "m")
    epochs = {ph: yaml.safe_load((train.REPO_ROOT / train_stats.RECIPES[ph]).read_text())["num_epochs"] for ph in "ABC"}
    steps = {"A": 2 * epochs["A"], "B": 3 * epochs["B"], "C": 3 * epochs["C"]}  # ceil(rows / 32) x epochs
    assert {ph: v["optimizer_steps"] for ph, v in est["tuned"]["stages"].items()} == steps
    assert est["tuned"]["training_s"] == pytest.approx(steps["A"] * 1.0 + steps["B"] * 2.0 + steps["C"] * 3.0)
    assert "plain" not in est
    assert {ph: v["config"] for ph, v in est["fastest"]["stages"].items()} == {"A": "tuned", "B": "tuned", "C": "tuned"}


def test_pipeline_estimate_fastest_within_the_memory_limit():
    """fastest: per phase the quickest non-plain row at or under 7 GiB, whatever its name."""
    def row(phase, config, s, gib):
        return {"phase": phase, "config": config, "device": "gpu", "model": {"name": "m"}, "run_id": "r",
                "step_s": {"median": s}, "peak_reserved_gib": gib}
    doc = {"runs": {"r": {"data": {"B": {"rows": 64}, "C": {"rows": 64}}}},
           "rows": [row("B", "plain", 3.0, 5.0), row("B", "tuned", 0.8, 5.2), row("B", "tuned-pack32", 0.4, 6.0),
                    row("C", "tuned", 5.0, 5.5), row("C", "tuned-micro8", 2.3, 6.8), row("C", "tuned-micro16", 1.6, 9.3),
                    {**row("C", "tuned-micro32", 0.1, 3.0), "error": "died"}]}
    est = train_stats.pipeline_estimate(doc, "gpu", "m")
    assert {ph: v["config"] for ph, v in est["fastest"]["stages"].items()} == {"B": "tuned-pack32", "C": "tuned-micro8"}
    assert est["plain"]["stages"] == {"B": {"config": "plain", "optimizer_steps": 2 * 3, "s": 18.0}}
    assert train_stats.pipeline_estimate(doc, "gpu", "m", limit_gib=10)["fastest"]["stages"]["C"]["config"] == "tuned-micro16"


def test_step_meter_counts_a_step():
    import torch

    from askdraft_bench import StepMeter
    meter = StepMeter(pad_id=2)
    meter.on_step_begin(None, None, None)
    meter.count({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])})
    meter.count({"input_ids": torch.tensor([[5, 6, 7, 8, 9, 2, 2, 2], [5, 6, 2, 7, 8, 9, 3, 4]]),
                 "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]])})
    meter.on_step_end(None, None, None)
    meter.on_log(None, None, None, logs={"loss": 1.5})
    (step,) = meter.steps
    assert {k: step[k] for k in ("useful", "total", "rows", "loss")} == {"useful": 5 + 13, "total": 8 + 16, "rows": 2 + 4, "loss": 1.5}
    assert meter.step_s == [step["s"]] and step["s"] > 0


def test_packed_counts_drop_the_padding_tail():
    import torch

    from askdraft_bench import packed_counts
    ids = torch.tensor([[5, 6, 7, 8, 9, 2, 2, 2], [5, 6, 2, 7, 8, 9, 3, 4]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]])
    assert packed_counts(ids, pos, pad_id=2) == (5 + 8, 2 + 2)   # row 1 ends in a row of pads
