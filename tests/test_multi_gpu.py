"""Several processes: phase C's per-batch statistics and metrics on N ranks equal one process's
(real torch.distributed over gloo on the CPU), and the `askdraft bench multi-gpu` runner end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tiny_llama, synthetic_pairs

REPO = Path(__file__).resolve().parents[1]


def run_ranks(world, model_dir, out, port):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node", str(world), "--master_port", str(port),
                        str(REPO / "tests" / "dpo_ranks.py"), str(model_dir), str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    data = json.loads(Path(out).read_text())
    assert data["world"] == world
    return [e for e in data["log_history"] if "loss" in e]


@pytest.mark.slow
def test_two_ranks_log_what_one_process_logs(tmp_path):
    model = build_tiny_llama(tmp_path / "model", [r["prompt"] + r["chosen"] + r["rejected"] for r in synthetic_pairs(32)])
    one = run_ranks(1, model, tmp_path / "one.json", 29531)
    two = run_ranks(2, model, tmp_path / "two.json", 29532)
    assert len(one) == len(two) == 4
    # the seed Dr drop of each step: 15 % of 16 pairs, carried (0.6 a micro-batch of 4): floor(0.6 k) over
    # micro-batches k = 1..16 -> 2, 2, 3, 2
    assert [e["askdraft/pairs_dropped_total"] for e in one] == [2, 2, 3, 2]
    for a, b in zip(one, two):
        assert b["askdraft/pairs_dropped_total"] == a["askdraft/pairs_dropped_total"], (a, b)
        assert b["askdraft/pairs_dropped"] == pytest.approx(a["askdraft/pairs_dropped"], abs=1e-9)
        assert b["num_tokens"] == a["num_tokens"]
        # float32 reductions in another order (DDP's all-reduce), amplified a little by Adam: 1e-4
        for key in ("loss", "askdraft/cal_shift", "rewards/margins", "rewards/chosen", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], abs=1e-4, rel=1e-4), (key, a, b)
    assert len({round(e["loss"], 4) for e in one}) > 1  # the steps differ: the comparison is not vacuous


@pytest.mark.slow
def test_runner_on_the_cpu_writes_the_json(tmp_path):
    pairs = synthetic_pairs(32)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    model = build_tiny_llama(tmp_path / "model", [r["prompt"] + r["chosen"] + r["rejected"] for r in pairs])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins")])}
    r = subprocess.run([sys.executable, "-m", "askdraft.cli", "bench", "multi-gpu", "--phase", "c", "--base", str(model),
                        "--data", str(data), "--name", "cpu-c", "--modes", "1gpu", "--cpu", "--steps", "4",
                        "--warmup", "1", "--profile", "cpu", "--profile", "dpo-fast",
                        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "res")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "res" / "cpu-c.json").read_text())
    m = res["modes"]["1gpu"]
    assert res["rows"] == 32 and res["devices"] == ["cpu"] and res["commit"] and res["versions"]["axolotl"]
    assert [s["step"] for s in m["steps"]] == [1, 2, 3, 4] and all("loss" in s for s in m["steps"])
    # one step an epoch: the schedule's four epochs, Cal in 2-3, Dr in 4 (15 % of 32 pairs -> 4 or 5)
    assert [s["askdraft/epoch"] for s in m["steps"]] == [1, 2, 3, 4]
    assert [s["askdraft/cal_shift"] != 0 for s in m["steps"]] == [False, True, True, False]
    assert m["steps"][3]["askdraft/pairs_dropped_total"] in (4, 5) and m["pairs_dropped_total"] in (4, 5)
    assert m["processes"] == 1 and len(m["step_s"]) == 4 and m["step_s_median"] > 0 and m["tokens_per_s"] > 0
    assert all(t > 0 for t in m["useful_tokens_per_step"]) and m["peak_reserved_gib"] == [None]
    assert (tmp_path / "res" / "cpu-c.png").stat().st_size > 0


def test_mode_recipes_keep_the_batch_and_add_the_bench_plugin(tiny_llama_dir, tmp_path):
    from askdraft.bench import multi_gpu as mg

    cfgs = {mode: mg.compose_recipe("c", mode, tiny_llama_dir, tmp_path / "p.jsonl", tmp_path / mode, tmp_path,
                                    ["gpu-fast", "dpo-fast"], 12, 1 if mode == "1gpu" else 2)
            for mode in mg.MODES}
    for mode, cfg in cfgs.items():
        world = 1 if mode == "1gpu" else 2
        assert cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"] * world == 32, mode
        assert cfg["plugins"][-1] == "askdraft_bench.BenchPlugin" and "askdraft_dpo.AskDraftDPOPlugin" in cfg["plugins"]
        assert (cfg["max_steps"], cfg["logging_steps"], cfg["save_strategy"]) == (12, 1, "no")
        assert cfg["adapter"] == "lora" and cfg["load_in_4bit"] is False  # the gpu-fast profile
        assert ("deepspeed" in cfg) == (mode == "zero2")
    assert Path(cfgs["zero2"]["deepspeed"]) == mg.ZERO2 and mg.ZERO2.is_file()
    b = mg.compose_recipe("b", "ddp", tiny_llama_dir, tmp_path / "b.jsonl", tmp_path / "b", tmp_path, [], 12, 2)
    assert b["lora_model_dir"] is None and b["adapter"] == "qlora"  # no phase A adapter; the recipe's QLoRA
    with pytest.raises(mg.InputError, match="do not divide"):
        mg.compose_recipe("b", "ddp", tiny_llama_dir, tmp_path / "b.jsonl", tmp_path / "b", tmp_path, [], 12, 3)
    assert mg.launch_command("r.yaml", "1gpu", 1, False)[-2:] == ["--launcher", "python"]
    cmd = mg.launch_command("r.yaml", "ddp", 2, False)
    assert cmd[cmd.index("--launcher"):] == ["--launcher", "accelerate", "--", "--num_processes", "2"]


def test_mode_env_gives_the_gpus_and_keeps_nccl(monkeypatch):
    from askdraft.bench import multi_gpu as mg

    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    assert mg.mode_env("1gpu", ["2", "3"], False)["CUDA_VISIBLE_DEVICES"] == "2"
    env = mg.mode_env("zero2", ["2", "3"], False)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["NCCL_NVLS_ENABLE"] == "0"
    assert str(REPO / "plugins") in env["PYTHONPATH"].split(os.pathsep)


def _rank(rank, step_s, tokens, peak, losses):
    return {"rank": rank, "world": 2, "device": "gpu", "distributed_type": "MULTI_GPU", "step_s": step_s,
            "tokens": tokens, "peak_reserved_bytes": peak, "peak_rss_bytes": 2**30,
            "log_history": [{"step": i + 1, "loss": x, "askdraft/pairs_dropped_total": 1.0} for i, x in enumerate(losses)]
            + [{"train_runtime": 1.0, "step": len(losses)}]}


def test_summary_times_the_slowest_process_after_the_warmup():
    from askdraft.bench import multi_gpu as mg

    ranks = [_rank(1, [9.0, 1.0, 2.0, 1.0], [10, 10, 10, 10], 3 * 2**30, [0.7, 0.6, 0.5, 0.4]),
             _rank(0, [9.0, 2.0, 1.0, 1.0], [20, 20, 20, 20], 2**30, [0.7, 0.6, 0.5, 0.4])]
    s = mg.summarize(ranks, warmup=1, phase="c")
    assert s["step_s"] == [9.0, 2.0, 2.0, 1.0] and s["step_s_median"] == 2.0 and s["timed_steps"] == 3
    assert s["tokens_per_s"] == pytest.approx(90 / 5) and s["peak_reserved_gib"] == [1.0, 3.0]
    assert [x["loss"] for x in s["steps"]] == [0.7, 0.6, 0.5, 0.4] and s["pairs_dropped_total"] == 4
    one = mg.summarize([{**_rank(0, [9.0, 2.0, 2.0, 2.0], [15] * 4, 2**30, [0.7, 0.6, 0.55, 0.4]), "world": 1}], 1, "c")
    modes = {"1gpu": one, "ddp": s, "zero2": {"error": "exit 1"}}
    mg.compare(modes, compare_steps=3)
    assert s["scaling_vs_1gpu"] == pytest.approx(18 / 7.5) and s["loss_diff_steps"] == 3
    assert s["max_abs_loss_diff_vs_1gpu"] == pytest.approx(0.05) and s["pairs_dropped_equal_1gpu"]
    assert "scaling_vs_1gpu" not in modes["zero2"]


def test_doc_table_from_a_result(tmp_path):
    import doc_tables
    from askdraft.io import write_json

    assert "No runs yet" in doc_tables.multi_gpu_table(tmp_path / "none")
    ddp = {"processes": 2, "devices": ["NVIDIA H200", "NVIDIA H200"], "step_s_median": 0.25, "tokens_per_s": 1234.4,
           "scaling_vs_1gpu": 1.8, "peak_reserved_gib": [3.0, 3.5], "max_abs_loss_diff_vs_1gpu": 1e-3,
           "loss_diff_steps": 8, "pairs_dropped_total": 7}
    write_json(tmp_path / "x-c.json", {"phase": "c", "modes": {"ddp": ddp, "zero2": {"error": "exit 1"}}})
    table = doc_tables.multi_gpu_table(tmp_path)
    assert "| `x-c.json` | C | ddp | 2 | NVIDIA H200 | 0.250 | 1234 | 1.80 | 3.5 | 0.001 (8 steps) | 7 |" in table
    assert "| `x-c.json` | C | zero2 | | | failed: exit 1 |" in table


def test_teacher_pairs_are_draft_pairs_that_fit(smollm2_dir):
    from conftest import strategyqa_split
    from askdraft import templates
    from askdraft.bench import inputs
    from askdraft.data import FILES

    pairs = inputs.teacher_pairs(strategyqa_split() / FILES["cot"], smollm2_dir)
    assert len(pairs) >= 8 * 16  # enough for 16 steps a mode
    for p in pairs[:50]:
        assert p["flipped"] and p["mode"] == "draft" and p["chosen"] == f" {p['gold']}"
        assert templates.parse_tentative(p["prompt"]) == p["gold"] and templates.parse_tentative(p["rejected"]) != p["gold"]


def test_a_mode_past_its_timeout_is_killed_with_its_children(tmp_path):
    from askdraft.bench import multi_gpu as mg

    marker = tmp_path / "child.pid"
    script = f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             f"open({str(marker)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    with open(tmp_path / "log", "w") as f:
        assert mg.run_group([sys.executable, "-c", script], dict(os.environ), f, timeout=3) == "timeout"
    import time
    pid = int(marker.read_text())
    for _ in range(50):  # the grandchild is gone (reaped by init) soon after the group is killed
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # killed, waiting for a reaper
            break
        time.sleep(0.1)
    else:
        pytest.fail("the mode's child process outlived the timeout")
