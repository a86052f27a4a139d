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
import statistics
from pathlib import Path

from askdraft import templates
from askdraft.io import InputError, write_jsonl

LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, max_position_embeddings=4096)
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


def build_random_model(out_dir, tokenizer_dir, shape=LLAMA2_7B):
    """out_dir/ with a random bf16 LlamaForCausalLM of `shape` + the tokenizer; reused when the
    saved config already has this shape and vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if shape_matches(out_dir, shape, len(tok)):
        return out_dir
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="bfloat16",
                      **shape)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out_dir


def teacher_pairs(train_cot, tokenizer_dir, out):
    """Phase C pairs from the teacher drafts (see the module doc), those over PAIR_MAX_LEN
    tokens dropped as `askdraft pairs --tokenizer` drops them (the recipe stops on longer ones)."""
    from askdraft.pairs import make_pair, pair_length
    from askdraft.records import read_split
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pairs = []
    for r in read_split(train_cot, cot=True):
        rationale = templates.teacher_draft(r["teacher_steps"]) if r.get("teacher_steps") else r["teacher_cot"]
        pair = make_pair(r["question"], templates.draft_text(rationale, r["teacher_final"]), r["teacher_final"], "draft")
        if pair is not None and pair_length(tok, pair) <= PAIR_MAX_LEN:
            pairs.append(pair)
    if not pairs:
        raise InputError(train_cot, None, f"no teacher pair fits {PAIR_MAX_LEN} tokens")
    write_jsonl(out, pairs)
    return out


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
    return teacher_pairs(train_cot, tokenizer_dir, Path(work) / "pairs_teacher.jsonl")


def row_tokens(path, tokenizer_dir, phase):
    """Tokens of each training row as the trainer sees it (SFT: input + output with the row's
    own special texts; DPO: prompt + chosen and prompt + rejected, + EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if phase == "C":
        return [n(r["prompt"]) + n(r[side]) + 1 for r in rows for side in ("chosen", "rejected")]
    return [sum(n(seg["text"]) for seg in r["segments"]) for r in rows]


def mean_tokens(path, tokenizer_dir, phase):
    return statistics.fmean(row_tokens(path, tokenizer_dir, phase))

