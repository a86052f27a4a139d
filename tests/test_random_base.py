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
