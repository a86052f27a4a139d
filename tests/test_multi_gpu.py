"""Several processes: phase C's per-batch statistics and metrics on N ranks equal one process's
(real torch.distributed over gloo on the CPU), and the `askdraft multi-gpu` runner end to end."""
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
    r = subprocess.run([sys.executable, "-m", "askdraft.cli", "multi-gpu", "--phase", "c", "--base", str(model),
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
