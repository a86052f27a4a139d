"""One round of the self-guided loop end to end on CPU: tiny Llama as "phase B merged", a random
LoRA as "phase C", 8 train questions; real drafts, pairs, `axolotl merge-lora` and `axolotl train`.

The random model writes no "Tentative answer:", so the round uses --mode answer (which keeps
unparsed drafts); the draft-mode flip rule is tested in test_drafts_pairs.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import strategyqa_split

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_tensors(path):
    from safetensors.torch import load_file
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def merged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()


@pytest.mark.slow
def test_one_sg_round(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)  # a "phase C" adapter that really changes the model (B != 0)
    phase_c = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(
        r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM"))
    phase_c.save_pretrained(tmp_path / "dpo_phaseC")
    data = tmp_path / "data"
    data.mkdir()
    for name, lo, n in (("strategyqa_train_cot.jsonl", 0, 8), ("strategyqa_dev.jsonl", 0, 4)):
        (data / name).write_text("".join((strategyqa_split() / name).read_text().splitlines(True)[lo:lo + n]))

    cmd = [sys.executable, str(REPO / "tools/iterate_dpo.py"), "--rounds", "1",
           "--start-base", str(tiny_llama_dir), "--start-adapter", "dpo_phaseC", "--out", "models/sg",
           "--data", "data", "--data-out", "data/sg", "--profile", "cpu", "--mode", "answer",
           "--batch-size", "4", "--max-new-tokens", "24", "--set", "micro_batch_size=4",
           "--set", "gradient_accumulation_steps=1", "--set", "learning_rate=0.02",
           "--set", "warmup_ratio=0", "--set", "dataset_num_proc=1"]
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]

    rd, md = tmp_path / "data/sg/round_1", tmp_path / "models/sg/round_1"
    train = [json.loads(x) for x in (rd / "train.jsonl").read_text().splitlines()]
    assert len(train) == 8 and len((rd / "dev.jsonl").read_text().splitlines()) == 4
    pairs = [json.loads(x) for x in (rd / "pairs.jsonl").read_text().splitlines()]
    assert [p["question"] for p in pairs] == [t["question"] for t in train]
    assert all(p["chosen"] == " " + t["answer"] and t["draft"] in p["prompt"] for p, t in zip(pairs, train))
    assert json.loads((rd / "pairs.report.json").read_text())["pairs"] == 8

    # the round's start is phase C merged (the drafting model), and it is the DPO reference
    start, expect = AutoModelForCausalLM.from_pretrained(md / "start").state_dict(), merged(tiny_llama_dir, tmp_path / "dpo_phaseC").state_dict()
    assert all(torch.allclose(start[k], expect[k], atol=1e-6) for k in expect)
    state = json.loads(sorted(md.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    steps = [e for e in state["log_history"] if "askdraft/beta" in e]
    # margin ~0 at the first step: the (precomputed) reference is the start model itself
    assert len(steps) == 2 and abs(steps[0]["rewards/margins"]) < 1e-5
    assert all(e["askdraft/beta"] == 0.1 and e["askdraft/cal_shift"] == 0 for e in steps)
    assert sum(e["askdraft/pairs_dropped"] for e in steps) == 1  # the robust filter: 15 % of 8

    new, old = lora_tensors(md), lora_tensors(tmp_path / "dpo_phaseC")
    assert set(new) == set(old)
    assert all(new[k].abs().sum() > 0 for k in new if "lora_B" in k)  # moved from its zero init
    assert all(not torch.equal(new[k], old[k]) for k in new)
    done = json.loads((md / "ROUND.json").read_text())
    assert done["pairs"]["pairs"] == 8 and done["drafts"]["train"]["n"] == 8

    stamp = [(p, p.stat().st_mtime_ns) for p in (md / "ROUND.json", md / "adapter_model.safetensors", rd / "pairs.jsonl")]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "round 1: done" in again.stdout and "axolotl" not in again.stdout
    assert stamp == [(p, p.stat().st_mtime_ns) for p in (md / "ROUND.json", md / "adapter_model.safetensors", rd / "pairs.jsonl")]
