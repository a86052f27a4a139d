"""Phases A and B through the real `axolotl train` on CPU with SmolLM2-135M (a data subset):
loss falls, adapters land where the recipes say, phase B starts from phase A's adapter, and
the tokens axolotl trains on are the tokens lm-eval scores."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from askdraft import REPO_ROOT

pytestmark = pytest.mark.slow
ENV = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def askdraft(*args, cwd):
    return run([sys.executable, "-m", "askdraft.cli", *map(str, args)], cwd)


def train(phase, base, cwd, rows_epochs):
    recipe = cwd / f"{phase}.yaml"
    askdraft("recipe", REPO_ROOT / "recipes" / f"{phase}.yaml", "--profile", "cpu",
             "--set", f"base_model={base}", "--set", f"num_epochs={rows_epochs}",
             "--set", "gradient_accumulation_steps=1", "--set", "save_total_limit=null", "-o", recipe, cwd=cwd)
    run([str(Path(sys.executable).parent / "axolotl"), "train", str(recipe)], cwd)


def losses(output_dir):
    states = sorted(glob.glob(f"{output_dir}/checkpoint-*/trainer_state.json"), key=lambda p: int(p.split("-")[-1].split("/")[0]))
    history = json.loads(Path(states[-1]).read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smollm2_dir):
    cwd = tmp_path_factory.mktemp("ab")
    askdraft("data", "--no-hub", cwd=cwd)
    askdraft("sft-data", "--base", smollm2_dir, "--limit", 24, cwd=cwd)
    train("phase_a", smollm2_dir, cwd, 2)
    (cwd / "phase_a_adapter.safetensors").write_bytes((cwd / "models/baseline_phaseA/adapter_model.safetensors").read_bytes())
    train("phase_b", smollm2_dir, cwd, 2)
    return cwd


@pytest.mark.parametrize("out, factor", [("models/baseline_phaseA", 0.8), ("models/cot_phaseB", 0.95)])
def test_phase_a_and_b_train_and_save(workdir, out, factor):
    """The second epoch's mean loss is below the first's (phase B learns whole rationales, so
    it falls more slowly than phase A's yes/no)."""
    assert (workdir / out / "adapter_model.safetensors").is_file()
    assert json.loads((workdir / out / "adapter_config.json").read_text())["r"] == 8
    curve = losses(workdir / out)
    assert len(curve) == 12  # 24 rows / micro batch 4 x 2 epochs
    assert sum(curve[6:]) / 6 < factor * sum(curve[:6]) / 6, curve


def test_phase_b_starts_from_phase_a_adapter(workdir, monkeypatch):
    """Load phase B's model the way `axolotl train` does and compare its trainable adapter
    with phase A's saved one, tensor for tensor."""
    import torch
    from axolotl.cli.config import load_cfg
    from axolotl.cli.utils.load import load_model_and_tokenizer
    from safetensors.torch import load_file

    monkeypatch.chdir(workdir)
    cfg = load_cfg(str(workdir / "phase_b.yaml"))
    model, _, _ = load_model_and_tokenizer(cfg=cfg)
    saved = load_file(workdir / "phase_a_adapter.safetensors")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for name, tensor in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert loaded[key].requires_grad, key
        torch.testing.assert_close(loaded[key].detach().float(), tensor.float(), rtol=0, atol=0)
    assert any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)  # phase A really trained B
    phase_b = load_file(workdir / "models/cot_phaseB/adapter_model.safetensors")
    assert any(not torch.equal(phase_b[n], saved[n]) for n in saved)  # and phase B moved on from it


def prepared_rows(workdir, phase):
    from datasets import load_from_disk
    [info] = glob.glob(f"{workdir}/.cache/axolotl_prepared/{phase}/*/dataset_info.json")
    return load_from_disk(str(Path(info).parent))


@pytest.mark.parametrize("phase, task, train_file", [
    ("phase_a", "strategyqa", "data/strategyqa_train_baseline.jsonl"),
    ("phase_b", "strategyqa_cot", "data/strategyqa_train_cot.jsonl"),
])
def test_trained_prompt_is_the_scored_prompt(workdir, smollm2_dir, phase, task, train_file):
    """lm-eval renders the task over the training questions; its context must decode from,
    and encode to, exactly the masked prompt tokens axolotl trained on."""
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tm = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata={"dev": str(workdir / train_file)})
    lm_task = get_task_dict([task], tm)[task]
    docs = {lm_task.doc_to_text(d): d for d in lm_task.test_docs()}
    trained = prepared_rows(workdir, phase)
    assert len(trained) == 24
    for row in trained:  # axolotl shuffles rows, so match them by prompt
        prompt_ids = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == -100]
        context = tok.decode(prompt_ids)
        assert context in docs
        assert tok(context, add_special_tokens=False).input_ids == prompt_ids
        if task == "strategyqa":  # the scored continuation is the trained completion (before EOS)
            doc = docs[context]
            target = lm_task.doc_to_choice(doc)[lm_task.doc_to_target(doc)]
            completion_ids = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
            assert completion_ids == tok(target, add_special_tokens=False).input_ids + [tok.eos_token_id]
