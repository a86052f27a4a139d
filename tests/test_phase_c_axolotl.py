"""A real `axolotl train recipes/phase_c.yaml` on CPU: tiny Llama, 16 synthetic pairs, 4 epochs.

The recipe runs as shipped plus recipes/profiles/cpu.yaml plus test-size overrides (paths,
batch 4 x 1, a larger learning rate so 16 steps move the margin)."""
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from conftest import synthetic_pairs

REPO = Path(__file__).resolve().parents[1]


def reference_logps(model_dir, pairs):
    """Summed log-prob of chosen/rejected (+ EOS) under the starting model, tokenized as TRL does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def score(prompt, completion):
        p = tok(prompt)["input_ids"]
        full = tok(prompt + completion + tok.eos_token)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([full])).logits[0, :-1].log_softmax(-1)
        return sum(logp[i - 1, full[i]].item() for i in range(len(p), len(full)))

    return (sum(score(r["prompt"], r["chosen"]) for r in pairs) / len(pairs),
            sum(score(r["prompt"], r["rejected"]) for r in pairs) / len(pairs))


def _recipe(tiny_llama_dir, tmp_path, **overrides):
    cfg = yaml.safe_load((REPO / "recipes/phase_c.yaml").read_text())
    cfg.update(yaml.safe_load((REPO / "recipes/profiles/cpu.yaml").read_text()))
    cfg.update(base_model=str(tiny_llama_dir), output_dir=str(tmp_path / "out"),
               dataset_prepared_path=str(tmp_path / "prepared"), **overrides)
    path = tmp_path / "phase_c_test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_epoch_recipe(tiny_llama_dir, tmp_path, **keys):
    """Phase C's recipe for one epoch of plain DPO on 8 synthetic pairs, 4 a step, plus `keys`."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(8)))
    datasets = yaml.safe_load((REPO / "recipes/phase_c.yaml").read_text())["datasets"]
    datasets[0]["path"] = str(data)
    return _recipe(tiny_llama_dir, tmp_path, datasets=datasets, num_epochs=1, gradient_accumulation_steps=1,
                   askdraft_schedule=[{"epochs": [1, 1], "beta": 0.1}], **keys)


@pytest.mark.parametrize("bad, msg", [
    ({"askdraft_drop_fraction": 1.5}, "askdraft_drop_fraction\n  Input should be less than 1"),
    ({"askdraft_schedule": [{"epochs": [1, 2], "beta": 0.1}]}, "ends at epoch 2 but num_epochs is 4"),
    ({"askdraft_schedule": [{"epochs": [1, 1], "beta": 0.1, "robust": "dr"}]}, "'none', 'seed' or 'published'"),
    ({"rl_beta": 0.2}, "the schedule sets beta"),
    ({"askdraft_drop_socre": "loss"}, "unknown askdraft_dpo key"),
])
def test_recipe_keys_checked_by_axolotls_schema(tiny_llama_dir, tmp_path, bad, msg):
    from axolotl.cli.config import load_cfg

    with pytest.raises(ValueError, match=msg):
        load_cfg(str(_recipe(tiny_llama_dir, tmp_path, **bad)))


def test_recipe_loads_with_the_plugin(tiny_llama_dir, tmp_path):
    from axolotl.cli.config import load_cfg

    cfg = load_cfg(str(_recipe(tiny_llama_dir, tmp_path)))
    assert cfg.trainer_cls == "askdraft_dpo.trainer.AskDraftDPOTrainer"  # set by the plugin's register()
    assert [(e["epochs"], e["beta"], e["cal"], e["robust"]) for e in cfg.askdraft_schedule] == [
        ((1, 1), 0.05, "none", "none"), ((2, 3), 0.1, "seed", "none"), ((4, 4), 0.1, "none", "seed")]
    assert cfg.sequence_len == 256 and cfg.num_epochs == 4 and cfg.gradient_accumulation_steps == 8


@pytest.mark.slow
def test_phase_c_recipe_runs_the_schedule(tiny_llama_dir, tmp_path):
    pairs = synthetic_pairs(16)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    datasets = yaml.safe_load((REPO / "recipes/phase_c.yaml").read_text())["datasets"]
    datasets[0]["path"] = str(data)
    # summed log-probs and no NLL term (the seed's loss), so the reference is checked against sums below
    recipe = _recipe(tiny_llama_dir, tmp_path, datasets=datasets, gradient_accumulation_steps=1,
                     learning_rate=2e-2, warmup_ratio=0.0, lr_scheduler="constant", dataset_num_proc=1,
                     askdraft_length_normalize=False, askdraft_rpo_alpha=0.0)

    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    axolotl = Path(sys.executable).with_name("axolotl")
    run = subprocess.run([str(axolotl), "train", str(recipe)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]

    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    state = sorted(out.glob("checkpoint-*/trainer_state.json"))[-1]
    logs = [e for e in json.loads(state.read_text())["log_history"] if "askdraft/epoch" in e]
    assert len(logs) == 16  # 4 epochs x 16 pairs / 4 per step, logged every step
    by_epoch = defaultdict(list)
    for e in logs:
        by_epoch[int(e["askdraft/epoch"])].append(e)
    assert sorted(by_epoch) == [1, 2, 3, 4] and all(len(v) == 4 for v in by_epoch.values())

    for epoch, entries in by_epoch.items():
        assert all(e["askdraft/beta"] == (0.05 if epoch == 1 else 0.1) for e in entries), epoch
        shifts = [e["askdraft/cal_shift"] for e in entries]
        assert all(s != 0 for s in shifts) if epoch in (2, 3) else all(s == 0 for s in shifts), (epoch, shifts)
        dropped = sum(e["askdraft/pairs_dropped"] for e in entries)
        assert dropped == (2 if epoch == 4 else 0), (epoch, dropped)  # 15 % of 16 = 2.4 -> 0,1,0,1
        assert sum(e["askdraft/pairs_dropped_total"] for e in entries) == dropped  # one micro-batch a step

    first = logs[0]  # step 0: the fresh adapter is zero, so policy == reference == phase B (to float32
    # rounding: the policy's LM head runs on the completion positions only, TRL's reference on all)
    for key in ("rewards/margins", "rewards/chosen", "rewards/rejected"):
        assert first[key] == pytest.approx(0, abs=1e-6), key
    assert first["logps/chosen"] == pytest.approx(first["askdraft/ref_logps_chosen"], abs=1e-6)
    # the reference stays the starting model all run: each epoch's mean reference log-prob is the
    # dataset mean under the starting model, scored here independently
    ref_c, ref_r = reference_logps(tiny_llama_dir, pairs)
    for entries in by_epoch.values():
        assert sum(e["askdraft/ref_logps_chosen"] for e in entries) / 4 == pytest.approx(ref_c, rel=1e-4)
        assert sum(e["askdraft/ref_logps_rejected"] for e in entries) / 4 == pytest.approx(ref_r, rel=1e-4)

    margins = {k: sum(e["rewards/margins"] for e in v) / 4 for k, v in by_epoch.items()}
    assert margins[4] > margins[1] and margins[4] > 0, margins
    assert sum(e["rewards/accuracies"] for e in by_epoch[4]) / 4 > 0.5, margins


GOOD_PAIR = {"prompt": "Question: Is it red?\nStudent draft: d\nFinal answer:", "chosen": " yes", "rejected": " no"}


@pytest.mark.parametrize("bad, msg", [
    ({"prompt": GOOD_PAIR["prompt"], "rejected": " no"}, "missing field 'chosen'"),
    ({**GOOD_PAIR, "chosen": None}, "field 'chosen' must be a string, got a JSON null"),
    ({**GOOD_PAIR, "rejected": " yes"}, "chosen and rejected are the same text"),
    ({**GOOD_PAIR, "prompt": "  "}, "empty field 'prompt'"),
    ({**GOOD_PAIR, "rejected": " no\x00"}, r"field 'rejected' holds the control character U\+0000"),
    ("{\"prompt\": ", "malformed JSON"),
])
def test_malformed_pairs_are_refused_when_the_recipe_loads(tiny_llama_dir, tmp_path, bad, msg):
    from axolotl.cli.config import load_cfg

    rows = [json.dumps(r) for r in synthetic_pairs(4)]
    rows[2] = bad if isinstance(bad, str) else json.dumps(bad)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((REPO / "recipes/phase_c.yaml").read_text())
    ds = {**cfg["datasets"][0], "path": str(data)}
    with pytest.raises(ValueError, match=rf"{re.escape(str(data))}:3: {msg}"):
        load_cfg(str(_recipe(tiny_llama_dir, tmp_path, datasets=[ds])))
    # the recipe's own field names are the ones checked
    ds["type"] = {"field_prompt": "q", "field_chosen": "good", "field_rejected": "bad"}
    data.write_text("".join(json.dumps({"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}) + "\n"
                            for r in synthetic_pairs(4)))
    load_cfg(str(_recipe(tiny_llama_dir, tmp_path, datasets=[ds])))


def test_plugin_register_acts_only_on_configs_that_list_it():
    """axolotl calls register() of every plugin loaded in the process, also for later configs."""
    from askdraft_dpo import PLUGIN, AskDraftDPOPlugin

    other = {"plugins": ["askdraft_fastprep.FastPrepPlugin"]}
    AskDraftDPOPlugin().register(other)
    assert "trainer_cls" not in other
    with pytest.raises(ValueError, match="needs rl: dpo"):
        AskDraftDPOPlugin().register({"plugins": [PLUGIN]})


@pytest.mark.parametrize("fast", [False, True], ids=["defaults", "dpo-fast"])
def test_speed_switches(tiny_llama_dir, tmp_path, monkeypatch, fast):
    """askdraft_free_memory_each_step: false skips AxolotlDPOTrainer's per-step gc.collect();
    askdraft_cudnn_attention: false turns cuDNN SDPA off for the run and back on after it. One
    epoch of real axolotl DPO in this process, as tools/run_stages.py runs it."""
    import gc

    from axolotl.cli.main import cli

    recipe = _one_epoch_recipe(tiny_llama_dir, tmp_path, save_strategy="no",
                               askdraft_free_memory_each_step=not fast, askdraft_cudnn_attention=not fast)

    collected_in_step, real_collect = [], gc.collect
    def collect(*args):
        if sys._getframe(1).f_code.co_name == "training_step":
            collected_in_step.append(1)
        return real_collect(*args)
    cudnn_set, real_enable = [], torch.backends.cuda.enable_cudnn_sdp
    def enable_cudnn_sdp(on):
        cudnn_set.append((on, torch.backends.cuda.cudnn_sdp_enabled()))
        real_enable(on)
    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", enable_cudnn_sdp)
    monkeypatch.setenv("AXOLOTL_DO_NOT_TRACK", "1")
    monkeypatch.chdir(tmp_path)

    cli.main(args=["train", str(recipe), "--launcher", "python"], prog_name="axolotl", standalone_mode=False)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert len(collected_in_step) == (0 if fast else 2)  # 8 pairs, 4 a step
    assert cudnn_set == ([(False, True), (True, False)] if fast else [])
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_stabiliser_keys_reach_the_loss(tiny_llama_dir, tmp_path, monkeypatch):
    """askdraft_length_normalize + askdraft_rpo_alpha in a real axolotl DPO run in this process: the
    logged chosen log-prob is per token, and the NLL term logged beside it is exactly its negative."""
    from axolotl.cli.main import cli

    recipe = _one_epoch_recipe(tiny_llama_dir, tmp_path, save_strategy="epoch",
                               askdraft_length_normalize=True, askdraft_rpo_alpha=1.0)
    monkeypatch.setenv("AXOLOTL_DO_NOT_TRACK", "1")
    monkeypatch.chdir(tmp_path)
    cli.main(args=["train", str(recipe), "--launcher", "python"], prog_name="axolotl", standalone_mode=False)
    state = sorted((tmp_path / "out").glob("checkpoint-*/trainer_state.json"))[-1]
    logs = [e for e in json.loads(state.read_text())["log_history"] if "askdraft/nll_chosen" in e]
    assert len(logs) == 2
    for e in logs:
        assert e["askdraft/nll_chosen"] == pytest.approx(-e["logps/chosen"], rel=1e-5)
    # per token: a chosen " yes"/" no" (+ EOS) is 2-3 tokens, so its mean log-prob is far above the
    # summed log-prob of a 20-token rejected draft's
    assert logs[0]["logps/chosen"] > -15 and logs[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)


def test_shared_prompt_through_axolotl_logs_what_two_rows_log(tiny_llama_dir, tmp_path):
    """askdraft_shared_prompt: true in a real `axolotl train` (the recipe's precomputed reference
    included) logs the loss, gradient norm, margins and log-probs of the same run in TRL's two rows
    a pair, with the model run on fewer token positions. The two runs are two processes: their
    adapters start the same only because askdraft_seed seeds them (tests/test_seed_plugin.py)."""
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    axolotl = Path(sys.executable).with_name("axolotl")
    runs = {}
    for shared in (False, True):
        run = tmp_path / str(shared)
        run.mkdir()
        recipe = _one_epoch_recipe(tiny_llama_dir, run, save_strategy="epoch", learning_rate=1e-2,
                                   lora_dropout=0.0, askdraft_shared_prompt=shared)
        runs[shared] = (run, subprocess.Popen([str(axolotl), "train", str(recipe)], cwd=run, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = {}
    for shared, (run, proc) in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        state = sorted((run / "out").glob("checkpoint-*/trainer_state.json"))[-1]
        logs[shared] = [e for e in json.loads(state.read_text())["log_history"] if "rewards/margins" in e]
    assert len(logs[True]) == len(logs[False]) == 2
    for ours, trl in zip(logs[True], logs[False]):
        for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "logps/rejected",
                    "askdraft/ref_logps_rejected"):
            assert ours[key] == pytest.approx(trl[key], rel=1e-4, abs=1e-5), key
        assert ours["askdraft/model_positions"] < 0.8 * trl["askdraft/model_positions"]
    assert logs[False][1]["rewards/margins"] != pytest.approx(0, abs=1e-4)  # the first step moved the policy
