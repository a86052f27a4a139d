"""A base model with random weights at a known shape: `askdraft base-model random:llama2-7b`
(make base BASE_SRC=random:llama2-7b). It proves the pipeline's plumbing, memory and speed at the
real shape; it never writes a parseable draft and its accuracies are chance, so the folder carries
RANDOM_MARKER and the report marks every accuracy of it as not meaningful.

The weights are written tensor by tensor into safetensors shards of at most `max_shard_bytes`
(2 GB), never holding the whole model: a 7B (13.5 GB in bf16) is built with a shard's worth of
CPU RAM (one tensor at a time on the GPU where there is one; the values then differ from a CPU
build of the same seed). axolotl's merge-lora merges one base shard at a time, in about 1.2 GB +
1.5 x a shard of RAM (measured on CPU): ~4 GB for a 7B, against ~21 GB from one 13.5 GB shard.
The init is LlamaForCausalLM's own: every linear and embedding weight normal(0, initializer_range),
every RMSNorm weight 1, from one seeded generator. The tokenizer is the embedded SmolLM2 one (askdraft.bench.inputs), so rows tokenize to
their real lengths; the vocabulary is its 49152, not Llama-2's 32000.
"""
import json
import os
import shutil
from pathlib import Path

from askdraft.io import InputError

RANDOM_MARKER = "RANDOM_WEIGHTS.json"
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=512, rms_norm_eps=1e-5)


def shapes():
    from askdraft.bench.inputs import LLAMA2_7B
    return {"llama2-7b": LLAMA2_7B, "tiny": TINY}


def is_random(model_dir):
    return (Path(model_dir) / RANDOM_MARKER).is_file()


def random_weights_note(model_dirs):
    """The marker's note if any of these model dirs has random weights (summary.json's
    random_weights; the report then marks its numbers as not meaningful), else None."""
    for d in model_dirs:
        if d and is_random(d):
            return json.loads((Path(d) / RANDOM_MARKER).read_text(encoding="utf-8"))["note"]
    return None


def _tensor_specs(cfg):
    """[(name, shape)] of every saved weight, from a model built on the meta device."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return [(name, tuple(p.shape)) for name, p in model.state_dict().items()]


def write_random_model(out_dir, shape_name, tokenizer_dir, seed=0, max_shard_bytes=2 * 10**9):
    """out_dir/ with a random bf16 LlamaForCausalLM of the named shape + the tokenizer of
    tokenizer_dir; written into a temporary folder beside it and renamed into place."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

    if shape_name not in shapes():
        raise InputError(f"random:{shape_name}", None, f"unknown shape; choose from {sorted(shapes())}")
    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype="bfloat16",
                      **shapes()[shape_name])
    specs = _tensor_specs(cfg)
    shards, size = [[]], 0
    for name, shp in specs:
        nbytes = 2 * int(torch.Size(shp).numel())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shp))
        size += nbytes
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU draws a 7B's numbers in seconds
        gen = torch.Generator(device).manual_seed(seed)
        weight_map, total = {}, 0
        for i, shard in enumerate(tqdm(shards, desc=f"random {shape_name} shards"), 1):
            # one shard: model.safetensors with no index, as save_pretrained writes it (axolotl's
            # merge-lora writes an index only for a sharded base)
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
            tensors = {}
            for name, shp in shard:
                if name.endswith("norm.weight"):
                    t = torch.ones(shp, dtype=torch.bfloat16)
                else:
                    t = torch.empty(shp, dtype=torch.float32, device=device)
                    t = t.normal_(0.0, cfg.initializer_range, generator=gen).to(torch.bfloat16).cpu()
                tensors[name] = t
                weight_map[name] = fname
                total += t.numel() * 2
            save_file(tensors, tmp / fname, metadata={"format": "pt"})
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(tmp)
        GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / RANDOM_MARKER).write_text(json.dumps({
            "shape": shape_name, "seed": seed, "parameters": total // 2,
            "note": "Random weights: a check of the pipeline's plumbing, memory and speed at this shape. "
                    "Its drafts do not parse (each runs to the token cap, the slowest case) and its "
                    "accuracies are chance."}, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build(source, out_root, name=None):
    """`random:SHAPE` -> out_root/<name or SHAPE-random>/ (kept when already there)."""
    from askdraft.bench.inputs import embedded_tokenizer_dir

    shape_name = source.split(":", 1)[1]
    dest = Path(out_root) / (name or f"{shape_name}-random")
    if not (dest / "config.json").is_file():
        write_random_model(dest, shape_name, embedded_tokenizer_dir())
    return dest
