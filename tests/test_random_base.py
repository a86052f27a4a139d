"""`make base BASE_SRC=random:SHAPE`: a random-weight Llama written shard by shard (askdraft.random_base),
loadable by transformers with LlamaForCausalLM's init statistics, marked as random; the report of
a random model says its accuracies are not meaningful."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_random_model_sharded_and_loadable(tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from askdraft.random_base import RANDOM_MARKER, TINY, is_random, write_random_model

    out = write_random_model(tmp_path / "rand", "tiny", tiny_llama_dir, seed=3, max_shard_bytes=60_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and all(s.stat().st_size < 60_000 + 64_000 for s in shards)  # one tensor may exceed
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert is_random(out) and json.loads((out / RANDOM_MARKER).read_text())["shape"] == "tiny"
    assert not list(tmp_path.glob(".rand.tmp"))

    model = AutoModelForCausalLM.from_pretrained(out)
    cfg = model.config
    assert all(getattr(cfg, k) == v for k, v in TINY.items()) and not cfg.tie_word_embeddings
    assert model.dtype == torch.bfloat16
    params = dict(model.named_parameters())
    assert set(params) == set(index["weight_map"])  # every weight saved, none left at an init of its own
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in params.items() if n.endswith("norm.weight"))
    q = params["model.layers.0.self_attn.q_proj.weight"].float()
    assert abs(q.std().item() - cfg.initializer_range) < 0.1 * cfg.initializer_range
    assert not torch.equal(params["model.embed_tokens.weight"], params["lm_head.weight"])
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.isfinite(model(ids).logits.float()).all()

    one = write_random_model(tmp_path / "one", "tiny", tiny_llama_dir, seed=3)  # one shard: as save_pretrained names it
    assert sorted(p.name for p in one.glob("*.safetensors*")) == ["model.safetensors"]

    again = write_random_model(tmp_path / "rand2", "tiny", tiny_llama_dir, seed=3, max_shard_bytes=60_000)
    from safetensors.torch import load_file
    for s in shards:  # the same seed writes the same weights
        a, b = load_file(s), load_file(again / s.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_shape_is_a_clear_error(tmp_path, tiny_llama_dir):
    from askdraft.io import InputError
    from askdraft.random_base import write_random_model

    with pytest.raises(InputError, match="random:llama3-8b: unknown shape"):
        write_random_model(tmp_path / "x", "llama3-8b", tiny_llama_dir)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_make_base_random(tmp_path):
    """`make base BASE_NAME=... BASE_SRC=random:tiny`, the embedded tokenizer, through the Makefile."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins")])}
    done = subprocess.run(["make", "-f", str(REPO / "Makefile"), "--no-print-directory", "base",
                           f"PY={sys.executable}", "BASE_NAME=tiny-shape", "BASE_SRC=random:tiny",
                           f"BASE={tmp_path}/base/tiny-shape"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cfg = json.loads((tmp_path / "base/tiny-shape/config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["vocab_size"] == 49152
    assert (tmp_path / "base/tiny-shape/RANDOM_WEIGHTS.json").is_file()


@pytest.mark.slow
def test_merge_lora_of_a_sharded_base_equals_an_in_memory_merge(tmp_path, tiny_llama_dir):
    """`axolotl merge-lora` (as make merge-b runs it) merges a sharded base one shard at a time; on a
    random base of several shards its tensors equal W + scale * B @ A computed in memory (float32,
    then bf16), every untouched tensor is copied bit for bit, and the merged dir loads."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from askdraft.random_base import write_random_model

    base = write_random_model(tmp_path / "base", "tiny", tiny_llama_dir, seed=1, max_shard_bytes=60_000)
    assert len(list(base.glob("model-*.safetensors"))) > 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = {"base_model": str(base), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
           "lora_target_modules": ["q_proj", "v_proj", "down_proj"], "output_dir": str(tmp_path / "out"),
           "datasets": [{"path": str(tmp_path / "unused.jsonl"), "type": "alpaca"}], "sequence_len": 64,
           "micro_batch_size": 1, "num_epochs": 1, "learning_rate": 1e-4, "bf16": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins")]),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "axolotl.cli.main", "merge-lora", str(tmp_path / "cfg.yaml"),
                           "--lora-model-dir", str(adapter)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merged_dir = tmp_path / "out" / "merged"
    merged = {}
    for shard in sorted(merged_dir.glob("model-*.safetensors")):
        merged.update(load_file(shard))
    original = {}
    for shard in sorted(base.glob("model-*.safetensors")):
        original.update(load_file(shard))
    assert merged.keys() == original.keys()
    lora_state = dict(peft_model.named_parameters())
    scale = 16 / 8
    merged_count = 0
    for name, w in original.items():
        module = name.removesuffix(".weight")
        a = lora_state.get(f"base_model.model.{module}.lora_A.default.weight")
        if a is None:
            assert torch.equal(merged[name], w), name
            continue
        b = lora_state[f"base_model.model.{module}.lora_B.default.weight"]
        expected = (w.float() + scale * (b.detach() @ a.detach())).to(w.dtype)
        assert merged[name].dtype == w.dtype and torch.equal(merged[name], expected), name
        merged_count += 1
    assert merged_count == 3 * 2  # three modules in each of two layers
    reloaded = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert torch.isfinite(reloaded(torch.tensor([[1, 2, 3]])).logits.float()).all()
    assert (merged_dir / "RANDOM_WEIGHTS.json").is_file()  # the marker travels with the merge
