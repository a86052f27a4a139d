"""What the benchmark trains on: the random Llama-2-7B-shape model dir and the real rows.

The model is LlamaForCausalLM at the Llama-2-7B shape with random bf16 weights, built on the
GPU (seconds) and saved once under the cache with the embedded SmolLM2 tokenizer, so the rows
tokenize to their real lengths; its vocabulary is that tokenizer's (49152), not Llama-2's 32000.
The recipe's own `load_in_4bit` path quantizes it to NF4 when a row loads it.

Rows: data/sft/phase_a.jsonl and phase_b.jsonl (`make data sft`), and for phase C
data/pairs.jsonl when the project made one, else pairs built from the teacher drafts of
data/strategyqa_train_cot.jsonl: the teacher's draft concludes with the gold answer, so
askdraft.pairs.make_pair gives chosen = the gold answer, rejected = the same draft flipped.
"""
import json
import os
import statistics
from pathlib import Path

from askdraft import REPO_ROOT, templates
from askdraft.io import InputError, write_jsonl

LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, max_position_embeddings=4096, rms_norm_eps=1e-5)
# one random 7B-shape model for `make bench` and `make multi-gpu-bench` (13 GB: built once)
RANDOM_7B_DIR = REPO_ROOT / "runs" / "models" / "llama2-7b-shape"
SFT = {"A": "data/sft/phase_a.jsonl", "B": "data/sft/phase_b.jsonl"}
TRAIN_COT = "data/strategyqa_train_cot.jsonl"
PAIRS = "data/pairs.jsonl"
PAIR_MAX_LEN = 254  # phase C's sequence_len 256 less BOS and EOS (askdraft.pairs)


def embedded_tokenizer_dir():
    """The embedded SmolLM2-135M-Instruct model dir (askdraft base-model embedded; cached)."""
    from askdraft.base_model import build
    from askdraft.download import CACHE
    return Path(build("embedded", out_root=CACHE / "test-models"))


def shape_matches(model_dir, shape, vocab):
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file() or not any(Path(model_dir).glob("*.safetensors")):
        return False
    cfg = json.loads(cfg_path.read_text())
    return cfg.get("vocab_size") == vocab and all(cfg.get(k) == v for k, v in shape.items())


def build_random_model(out_dir, tokenizer_dir, shape=LLAMA2_7B, seed=0):
    """out_dir/ with a random bf16 LlamaForCausalLM of `shape` + the tokenizer of tokenizer_dir
    (vocab = its length), built on the GPU when there is one; reused when the saved config already
    has this shape and vocabulary; written to a temporary folder and renamed into place."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if shape_matches(out_dir, shape, len(tok)):
        return out_dir
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype="bfloat16",
                      **shape)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with device:
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    del model
    if device.type == "cuda":  # the rows that load it may be other processes: give the GPU back
        torch.cuda.empty_cache()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def teacher_pairs(train_cot, tokenizer_dir, max_len=PAIR_MAX_LEN):
    """Draft-mode DPO pairs from the teacher's drafts, for phase C without phases A and B: the
    prompt holds the teacher draft with the gold tentative answer, chosen is the gold final answer,
    rejected the same draft flipped (askdraft.pairs.make_pair of a right draft). Pairs over max_len
    tokens are left out, as `askdraft pairs --tokenizer` leaves them out (the recipe stops on them)."""
    from askdraft.pairs import make_pair, pair_length
    from askdraft.records import read_split
    from askdraft.sft_data import token_counter

    count = token_counter(tokenizer_dir)
    pairs = []
    for r in read_split(train_cot, cot=True):
        rationale = templates.teacher_draft(r["teacher_steps"]) if r.get("teacher_steps") else r["teacher_cot"]
        pair = make_pair(r["question"], templates.draft_text(rationale, r["teacher_final"]), r["teacher_final"], "draft")
        if pair is not None and pair_length(count, pair) <= max_len:
            pairs.append(pair)
    if not pairs:
        raise InputError(train_cot, None, f"no teacher pair fits {max_len} tokens")
    return pairs


def phase_data(phase, repo, work, tokenizer_dir):
    """The jsonl a phase trains on: the project's own file, or (C) teacher pairs built in work/."""
    repo = Path(repo)
    if phase in SFT:
        path = repo / SFT[phase]
        if not path.is_file():
            raise InputError(path, None, "missing: run `make data sft` first (the rows the recipes train on)")
        return path
    if (repo / PAIRS).is_file():
        return repo / PAIRS
    train_cot = repo / TRAIN_COT
    if not train_cot.is_file():
        raise InputError(train_cot, None, "missing: run `make data` first (phase C's pairs are built from it)")
    out = Path(work) / "pairs_teacher.jsonl"
    write_jsonl(out, teacher_pairs(train_cot, tokenizer_dir))
    return out


def row_tokens(path, tokenizer_dir, phase):
    """Tokens of each training row as the trainer sees it (SFT: input + output with the row's
    own special texts; DPO: prompt + chosen and prompt + rejected, + EOS)."""
    from askdraft.sft_data import token_counter

    n = token_counter(tokenizer_dir)
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if phase == "C":
        return [n(r["prompt"]) + n(r[side]) + 1 for r in rows for side in ("chosen", "rejected")]
    return [sum(n(seg["text"]) for seg in r["segments"]) for r in rows]


def mean_tokens(path, tokenizer_dir, phase):
    return statistics.fmean(row_tokens(path, tokenizer_dir, phase))

