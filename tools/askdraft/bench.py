"""Speed and memory of 7B QLoRA training for phases A, B and C (DPO), plain vs tuned.

    PYTHONPATH=tools python -m askdraft.bench [--phases A,B,C] [--configs plain,tuned] [--pipeline]
    PYTHONPATH=tools python -m askdraft.bench --tiny     # CPU smoke test -> runs/bench_tiny.json

The model is a LlamaForCausalLM at the Llama-2-7B shape with random bf16 weights built on the
GPU, its decoder Linear layers swapped for bitsandbytes NF4 Linear4bit (double quant, bf16
compute: what BitsAndBytesConfig gives axolotl's `load_in_4bit`), then peft LoRA r 8 / alpha 16 /
dropout 0.05 on every linear layer, gradient checkpointing on. One timed step is one optimizer
update: 32 sequences (A/B) or 32 pairs (C), split into micro-steps by the config.

Token lengths come from data/sft/phase_{a,b}.jsonl and data/pairs.jsonl tokenized with
--tokenizer (default: the first models/base/*/ tokenizer), else from the SPEC's medians
(question 23, rationale 64 tokens). Token ids are random: only shapes matter for speed.

useful_tokens_per_s counts non-padding tokens of the trained sequences (for DPO: chosen +
rejected rows; the reference forwards over the same rows are not counted twice). MFU =
model FLOPs per second / the card's dense bf16 peak, with per token 4*N_base + 6*N_lora for a
trained sequence (forward 2N, backward activation gradients 2N; the frozen 4-bit base has no
weight gradients, LoRA has both) and 2*(N_base + N_lora) for a no-grad reference forward.
N_base counts the matmul weights (decoder linears + lm_head, not the embedding lookup);
attention-score FLOPs and the gradient-checkpointing recompute are not counted.
"""
import argparse
import contextlib
import datetime
import gc
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from askdraft import git_commit
    from askdraft.io import write_json
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from askdraft import git_commit
    from askdraft.io import write_json

LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
                 max_position_embeddings=4096)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=172, vocab_size=512, max_position_embeddings=512)
# dense bf16 tensor-core peak (no sparsity), by device-name substring; first match wins
PEAK_BF16 = [("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
             ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12)]
MEM_LIMIT_GIB = 7.0
SEQS_PER_STEP = 32            # effective batch of the seed: 32 sequences (A/B) / 32 pairs (C)
MAX_LEN = {"A": 128, "B": 128, "C": 256}
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", bias="none")


# ---------------------------------------------------------------------------- configurations
def config_candidates(name, phase):
    """Settings for one (config, phase), as a list of candidates tried in order: the first whose
    probe step fits MEM_LIMIT_GIB is measured. micro * accum is 32 sequences (A/B) or pairs (C).
    layout: pad = every row padded to pad_to; longest = padded to the micro-batch's longest row
    (TRL's DPO collator); pack = the micro-batch's rows concatenated into one row with
    position_ids restarting per row and no padding (axolotl sample_packing)."""
    if name == "plain":  # the seed's recipe: micro 4 x accumulation 8, eager attention
        layout = "longest" if phase == "C" else "pad"  # TRL pads DPO pairs to the batch's longest
        return [dict(layout=layout, pad_to=128, micro=4, accum=8, attn="eager", reentrant=False,
                     fused_adam=False)]  # transformers' default checkpointing, HF's adamw_torch
    if name == "tuned":
        base = dict(attn="sdpa", reentrant=False, fused_adam=True, pad_to=None)
        if phase == "C":  # axolotl/TRL 0.19 have no padding-free DPO: bigger micro-batches, and
            # the reference log-probs computed once before training (TRL precompute_ref_log_probs)
            return [dict(base, layout="longest", micro=m, accum=32 // m, ref="precomputed")
                    for m in (16, 8, 4, 2, 1)]
        return [dict(base, layout="pack", micro=m, accum=32 // m) for m in (32, 16, 8)]
    if name == "packed":  # tuned, plus padding-free packed DPO (needs support in the plugin)
        return [dict(c, layout="pack") for c in config_candidates("tuned", phase)]
    raise SystemExit(f"unknown config {name!r} (plain, tuned, packed)")


# ---------------------------------------------------------------------------- token lengths
def _find_tokenizer(repo):
    found = sorted(Path(repo, "models/base").glob("*/tokenizer.json"))
    return str(found[0].parent) if found else None


def _short(path, repo):
    p = Path(path).resolve()
    return str(p.relative_to(Path(repo).resolve())) if p.is_relative_to(Path(repo).resolve()) else str(path)


def _tokenize_lengths(tok, texts):
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def length_samples(repo, tokenizer="auto", synthetic=False, seed=0):
    """{"A": [(prompt, completion)], "B": [...], "C": [(prompt, chosen, rejected)]} token
    counts per row, and a note saying where each came from."""
    rng = random.Random(seed)
    lognorm = lambda median, n: [max(2, round(median * math.exp(rng.gauss(0, 0.35))))  # noqa: E731
                                 for _ in range(n)]
    q, cot = lognorm(23, 2000), lognorm(64, 2000)
    samples = {"A": [(a, 2) for a in q], "B": list(zip(q, cot)),
               "C": [(a + b + 4, 2, b + 1) for a, b in zip(q, cot)]}
    notes = {p: "synthetic (question median 23, rationale median 64)" for p in samples}
    tokdir = _find_tokenizer(repo) if tokenizer == "auto" else tokenizer
    if synthetic or not tokdir:
        return samples, notes
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokdir)
    for phase, name in (("A", "phase_a"), ("B", "phase_b")):
        path = Path(repo, "data/sft", f"{name}.jsonl")
        if path.is_file():
            rows = [json.loads(line)["segments"] for line in path.open() if line.strip()]
            prompt = _tokenize_lengths(tok, ["".join(s["text"] for s in r if not s["label"]) for r in rows])
            compl = _tokenize_lengths(tok, ["".join(s["text"] for s in r if s["label"]) for r in rows])
            samples[phase] = list(zip(prompt, compl))
            notes[phase] = f"{path.relative_to(repo)} via {_short(tokdir, repo)}"
    path = Path(repo, "data/pairs.jsonl")
    if path.is_file():
        rows = [json.loads(line) for line in path.open() if line.strip()]
        p, c, r = (_tokenize_lengths(tok, [row[k] for row in rows]) for k in ("prompt", "chosen", "rejected"))
        samples["C"] = [(a, b + 1, d + 1) for a, b, d in zip(p, c, r)]  # TRL appends EOS
        notes["C"] = f"{path.relative_to(repo)} via {_short(tokdir, repo)} (+EOS)"
    return samples, notes


# ---------------------------------------------------------------------------- batches
def fit(prompt, completion, max_len):
    """Truncate like the collators: the completion keeps at least one token."""
    prompt = min(prompt, max_len - 1)
    return prompt, min(completion, max_len - prompt)


def padded_len(lengths, layout, pad_to=128):
    """Row length of a padded micro-batch (pack: one row of all tokens)."""
    if layout == "pad":
        return pad_to
    if layout == "longest":
        return max(lengths)
    if layout == "pack":
        return sum(lengths)
    raise ValueError(layout)


def token_counts(lengths, layout, pad_to=128):
    """(useful, total) tokens of one micro-batch of rows of these lengths."""
    rows = 1 if layout == "pack" else len(lengths)
    return sum(lengths), rows * padded_len(lengths, layout, pad_to)


def make_batch(rows, layout, pad_to, vocab, device, pad_id=0):
    """rows: (prompt_len, completion_len) with lengths already fitted. Returns model inputs
    (input_ids, labels = -100 on prompts and padding, attention_mask or packed position_ids),
    the completion mask (for DPO log-probs) and (useful, total) token counts."""
    lengths = [p + c for p, c in rows]
    width = padded_len(lengths, layout, pad_to)
    n = 1 if layout == "pack" else len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    start = 0
    for i, (p, c) in enumerate(rows):
        r, s = (0, start) if layout == "pack" else (i, 0)
        ids[r, s:s + p + c] = torch.randint(1, vocab, (p + c,))
        labels[r, s + p:s + p + c] = ids[r, s + p:s + p + c]
        mask[r, s:s + p + c] = 1
        pos[r, s:s + p + c] = torch.arange(p + c)
        start += p + c
    batch = {"input_ids": ids, "labels": labels}
    if layout == "pack":
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = mask
    batch = {k: v.to(device) for k, v in batch.items()}
    return batch, token_counts(lengths, layout, pad_to)


def step_batches(phase, sample, settings, vocab, device):
    """One optimizer step's micro-batches: [(inputs, (useful, total), n_rows)]."""
    out, micro = [], settings["micro"]
    for k in range(settings["accum"]):
        chunk = sample[k * micro:(k + 1) * micro]
        if phase == "C":  # TRL's order: all chosen rows, then all rejected rows
            rows = [fit(p, c, MAX_LEN[phase]) for p, c, _ in chunk] + \
                   [fit(p, r, MAX_LEN[phase]) for p, _, r in chunk]
        else:
            rows = [fit(p, c, MAX_LEN[phase]) for p, c in chunk]
        batch, counts = make_batch(rows, settings["layout"], settings["pad_to"], vocab, device)
        out.append((batch, counts, len(rows)))
    return out


# ---------------------------------------------------------------------------- model
def build_model(shape, device, quant):
    """Random LlamaForCausalLM built on `device`; with quant="nf4" every decoder Linear becomes a
    bitsandbytes NF4 Linear4bit (double quant, bf16 compute, uint8 storage), quantized in place."""
    from transformers import LlamaConfig, LlamaForCausalLM
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    if quant == "nf4":
        import bitsandbytes as bnb
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, lin in list(parent.named_children()):
                    if not isinstance(lin, torch.nn.Linear):
                        continue
                    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                                          compute_dtype=dtype, compress_statistics=True,
                                          quant_type="nf4", device="meta")
                    q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False,
                                                 compress_statistics=True, quant_type="nf4",
                                                 module=q)
                    setattr(parent, name, q.to(device))  # .to() quantizes
                    del lin
        model.is_loaded_in_4bit = True
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def add_lora(model):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))


def reset_lora(peft_model):
    for m in peft_model.modules():
        if hasattr(m, "reset_lora_parameters"):
            m.reset_lora_parameters("default", True)


def param_counts(shape, peft_model):
    h, i, L, V = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    n_base = L * (2 * h * h + 2 * h * kv + 3 * h * i) + V * h
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) if peft_model else 0
    return n_base, n_lora


VARLEN = True  # may use axolotl's sdpa_varlen patch (switched off if it fails on this host)


def set_attention(peft_model, attn, layout):
    hf = peft_model.get_base_model()
    hf.set_attn_implementation(attn)
    if VARLEN and attn == "sdpa" and layout == "pack" and next(hf.parameters()).is_cuda:
        try:  # axolotl's sample_packing + sdpa path: cu_seqlens varlen attention, no 4D mask
            from axolotl.monkeypatch.attention.sdpa_varlen import patch_sdpa_varlen
            if patch_sdpa_varlen():
                return "sdpa+varlen"
        except Exception as e:  # noqa: BLE001 - no axolotl here, or it does not import
            print(f"axolotl sdpa_varlen unavailable ({type(e).__name__}: {e})")
    return attn  # packed rows: transformers builds a block-diagonal mask from position_ids


# ---------------------------------------------------------------------------- steps
def seq_logps(model, batch):
    """Sum of completion-token log-probs per sequence (packed rows split by position_ids)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    target = labels[:, 1:]
    picked = torch.gather(logits, 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    lp = (picked - logits.logsumexp(-1)) * (target != -100)  # no second V-wide tensor
    if "position_ids" not in batch:
        return lp.sum(-1)
    seq_id = (batch["position_ids"] == 0).cumsum(-1)[:, 1:] - 1  # row index of each target
    return torch.zeros(int(seq_id.max()) + 1, device=lp.device).index_add_(0, seq_id[0], lp[0])


def dpo_loss(model, batch, beta=0.1, ref_mode="per_step"):
    """Sigmoid DPO with the reference = the same model with the adapter disabled (no grad),
    run every step, or (ref_mode "precomputed") read from a column filled before training,
    which costs one no-grad pass over the pairs (timed in the pipeline estimate)."""
    if ref_mode == "precomputed":
        ref = torch.zeros(batch["input_ids"].shape[0] if "position_ids" not in batch
                          else int((batch["position_ids"] == 0).sum()), device=batch["input_ids"].device)
    else:
        with torch.no_grad(), model.disable_adapter():
            ref = seq_logps(model, batch)
    pol = seq_logps(model, batch)
    n = pol.shape[0] // 2
    logits = (pol[:n] - pol[n:]) - (ref[:n] - ref[n:])
    return -torch.nn.functional.logsigmoid(beta * logits).mean()


def train_step(model, opt, phase, batches, ref_mode="per_step"):
    for batch, _, _ in batches:
        loss = dpo_loss(model, batch, ref_mode=ref_mode) if phase == "C" else model(**batch).loss
        (loss / len(batches)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    return torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else None


def measure(model, phase, settings, samples, args, device, vocab):
    """Run warm-up + timed optimizer steps; return the metric dict (no provenance)."""
    hf = model.get_base_model()
    hf.gradient_checkpointing_disable()  # also drops the input-grad hook of a previous run
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": settings["reentrant"]})
    attn = set_attention(model, settings["attn"], settings["layout"])
    model.train()
    reset_lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = settings["fused_adam"] and device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.98), weight_decay=0.0,
                            **({"fused": True} if fused else {"foreach": True}))
    rng = random.Random(f"{phase}-steps")  # the same rows for every config
    steps = [rng.sample(samples[phase], SEQS_PER_STEP) for _ in range(args.warmup + args.steps)]
    reset_peak(device)
    useful = total = 0
    times = []
    for k, sample in enumerate(steps):
        batches = step_batches(phase, sample, settings, vocab, device)
        sync(device)
        prof = op_profiler(args, phase, settings) if k == len(steps) - 1 else contextlib.nullcontext()
        with prof:  # the profiler's own teardown is not timed
            t0 = time.perf_counter()
            loss = train_step(model, opt, phase, batches, settings.get("ref", "per_step"))
            sync(device)
            dt = time.perf_counter() - t0
        if k >= args.warmup:
            times.append(dt)
            useful += sum(c[0] for _, c, _ in batches)
            total += sum(c[1] for _, c, _ in batches)
    assert math.isfinite(loss), f"loss {loss}"
    del opt
    secs = sum(times)
    mem = {}
    if device.type == "cuda":
        mem = dict(peak_reserved_gib=peak_gib(device),
                   peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30)
    return dict(mem, useful_tokens=useful, total_tokens=total, seconds=secs,
                s_per_step=statistics.median(times), useful_tokens_per_s=useful / secs,
                padding_fraction=1 - useful / total, attn=attn, final_loss=loss)


def op_profiler(args, phase, settings):
    """torch.profiler over one optimizer step; the op table goes to --profile-dir."""
    if not getattr(args, "profile_dir", None):
        return contextlib.nullcontext()
    out = Path(args.profile_dir) / f"ops_{phase}_{settings['layout']}_micro{settings['micro']}.txt"

    def write(prof):
        out.parent.mkdir(parents=True, exist_ok=True)
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        out.write_text(prof.key_averages().table(sort_by=sort, row_limit=30))

    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return torch.profiler.profile(activities=acts, on_trace_ready=write)


def flops_per_useful_token(phase, n_base, n_lora):
    train = 4 * n_base + 6 * n_lora
    return train + 2 * (n_base + n_lora) if phase == "C" else train  # + reference forward


def _varlen_off():
    """Undo axolotl's sdpa_varlen patch (stock SDPA with a block-diagonal mask remains)."""
    global VARLEN
    VARLEN = False
    with contextlib.suppress(ImportError):
        from axolotl.monkeypatch.attention.sdpa_varlen import unpatch_sdpa_varlen
        unpatch_sdpa_varlen()


def run_one(model, phase, config, samples, args, device, vocab, peak, n_params):
    """Measure the config's candidates in order and keep the first within MEM_LIMIT_GIB (plain:
    its one candidate, whatever it takes). On CUDA a one-step probe screens all but the last.
    A failing run becomes an error row instead of ending the whole benchmark."""
    cands, tried = config_candidates(config, phase), []
    too_big = lambda r: config != "plain" and r.get("peak_reserved_gib", 0) > MEM_LIMIT_GIB  # noqa: E731
    i = 0
    while i < len(cands):
        settings = cands[i]
        try:
            if device.type == "cuda" and i < len(cands) - 1:
                probe = argparse.Namespace(warmup=0, steps=1)
                res = measure(model, phase, settings, samples, probe, device, vocab)
                if too_big(res):
                    tried.append(f"micro {settings['micro']}: {res['peak_reserved_gib']:.2f} GiB")
                    i += 1
                    continue
            res = measure(model, phase, settings, samples, args, device, vocab)
        except torch.OutOfMemoryError:
            tried.append(f"micro {settings['micro']}: OOM")
            res = None
        except Exception as e:  # noqa: BLE001 - one bad kernel path must not cost the GPU call
            if VARLEN and settings["layout"] == "pack":
                print(f"varlen attention failed ({type(e).__name__}: {e}); retrying with stock SDPA")
                _varlen_off()
                continue
            return {"error": f"{type(e).__name__}: {e}"}
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if res is None or too_big(res):
            if res is not None:
                tried.append(f"micro {settings['micro']}: {res['peak_reserved_gib']:.2f} GiB")
            i += 1
            continue
        fpt = flops_per_useful_token(phase, *n_params)
        res["mfu"] = fpt * res["useful_tokens_per_s"] / peak if peak else None
        res["settings"] = dict(settings, attn=res.pop("attn"), seqs_per_step=SEQS_PER_STEP,
                               max_len=MAX_LEN[phase], gradient_checkpointing=True,
                               lora=LORA, rejected=tried, flops_per_useful_token=fpt)
        return res
    return {"error": f"no candidate fits {MEM_LIMIT_GIB} GiB: {tried}"}


# ---------------------------------------------------------------------------- pipeline
def time_generation(model, prompts, args, device, vocab):
    """Draft generation: greedy, KV cache, left padding, exactly args.new_tokens per prompt."""
    model.eval()
    model.get_base_model().set_attn_implementation("sdpa")
    reset_peak(device)
    n_batches = math.ceil(len(prompts) / args.gen_batch)
    timed = min(n_batches, args.gen_batches)
    times = []
    for b in range(timed + 1):  # batch 0 is warm-up
        chunk = prompts[(b % n_batches) * args.gen_batch:][:args.gen_batch]
        width = max(chunk)
        ids = torch.randint(3, vocab, (len(chunk), width), device=device)
        mask = torch.ones_like(ids)
        for i, n in enumerate(chunk):
            mask[i, :width - n] = 0
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=0)
        sync(device)
        if b:
            times.append(time.perf_counter() - t0)
    assert out.shape[1] == width + args.new_tokens
    return statistics.mean(times) * n_batches, timed == n_batches


def time_eval(model, lengths, batch_size, device, vocab):
    """Log-likelihood requests (no grad), sorted longest first and padded per batch like lm_eval."""
    model.eval()
    reset_peak(device)
    lengths = sorted(lengths, reverse=True)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(0, len(lengths), batch_size):
            chunk = lengths[k:k + batch_size]
            batch, _ = make_batch([(n - 1, 1) for n in chunk], "longest", None, vocab, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits.float().log_softmax(-1)  # what lm_eval does with them
    sync(device)
    return time.perf_counter() - t0


def pipeline(model, results, samples, args, device, vocab, build_s):
    """Whole-pipeline wall time at this shape: training stages from the measured s/step x the
    number of optimizer steps; drafts from timed generate batches x batches; eval really run."""
    counts = {"A": len(samples["A"]), "B": len(samples["B"]), "C": len(samples["C"])}
    epochs = {"A": 3, "B": 3, "C": 4}
    per_stage, steps = {}, {}
    for phase in "ABC":
        res = results.get((phase, args.pipeline_config))
        if res is None or "error" in res:
            return {"error": f"no {args.pipeline_config} measurement for phase {phase}"}
        steps[phase] = epochs[phase] * math.ceil(counts[phase] / SEQS_PER_STEP)
        per_stage[phase] = steps[phase] * res["s_per_step"]
    if results[("C", args.pipeline_config)]["settings"].get("ref") == "precomputed":
        rows = [p + c for p, c, _ in samples["C"]] + [p + r for p, _, r in samples["C"]]
        per_stage["C_reference_logps"] = time_eval(model, [min(n, MAX_LEN["C"]) for n in rows],
                                                   args.eval_batch, device, vocab)
    questions = [p for p, _ in samples["B"]][:args.draft_questions]
    questions += questions[:args.draft_questions - len(questions)]  # + dev questions
    per_stage["drafts"], gen_all = time_generation(model, questions, args, device, vocab)
    peaks = {"drafts": peak_gib(device)}
    q_only = [p + 2 for p, _ in samples["A"][:args.eval_docs]]
    with_draft = [p + 2 for p, _, _ in samples["C"][:args.eval_docs]]
    eval_lengths = 2 * (q_only * 2 + with_draft * 2)  # 4 tasks (2 with drafts) x docs x 2 choices
    per_stage["eval"] = time_eval(model, eval_lengths, args.eval_batch, device, vocab)
    peaks["eval"] = peak_gib(device)
    per_stage["model_loads"] = 5 * build_s  # A, B, drafts, C, eval each load the 4-bit base
    return dict(pipeline_7b_wall_s=sum(per_stage.values()), measured_or_extrapolated="extrapolated",
                per_stage_s=per_stage, peak_reserved_gib=peaks,
                settings=dict(config=args.pipeline_config, optimizer_steps=steps, epochs=epochs,
                              rows=counts, draft_questions=len(questions),
                              new_tokens=args.new_tokens, gen_batch=args.gen_batch,
                              eval_requests=len(eval_lengths), eval_batch=args.eval_batch,
                              timed_generate_batches=args.gen_batches, all_generated=gen_all,
                              note="training = measured s/step x steps; drafts = timed "
                                   "generate batches x batches; eval really run; model_loads = "
                                   "5 x in-memory build+quantize (disk reads and merge-lora "
                                   "not included)"))


# ---------------------------------------------------------------------------- output
def provenance(repo, device):
    commit = git_commit(repo)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return dict(device=name, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=commit)


def row_key(row):
    return ("pipeline" if "pipeline_7b_wall_s" in row else row.get("phase"), row.get("config"),
            row.get("device"), row.get("shape"))


def merge_rows(path, new_rows):
    """Existing rows of `path` with the same (phase|pipeline, config, device, shape) replaced."""
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else []
    keys = {row_key(r) for r in new_rows}
    return [r for r in old if row_key(r) not in keys] + new_rows


def peak_flops(name):
    return next((f for k, f in PEAK_BF16 if k in name), None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="A,B,C")
    ap.add_argument("--configs", default="plain,tuned", help="plain, tuned, packed")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=None, help="default results/bench.json (tiny: runs/bench_tiny.json)")
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers: a CPU smoke test")
    ap.add_argument("--quant", choices=["nf4", "none"], default=None, help="default nf4 on CUDA, none on CPU")
    ap.add_argument("--tokenizer", default="auto", help="tokenizer dir for data lengths")
    ap.add_argument("--synthetic", action="store_true", help="synthetic lengths even if data exists")
    ap.add_argument("--pipeline", action="store_true", help="also estimate the whole pipeline")
    ap.add_argument("--pipeline-config", default="tuned")
    ap.add_argument("--draft-questions", type=int, default=2289)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gen-batch", type=int, default=48, help="48 keeps the KV cache within 8 GB")
    ap.add_argument("--gen-batches", type=int, default=2, help="timed generate batches")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--eval-docs", type=int, default=289, help="dev questions per eval task")
    ap.add_argument("--profile-dir", help="write a torch.profiler op table of each run's last step here")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = TINY if args.tiny else LLAMA2_7B
    quant = args.quant or ("nf4" if device.type == "cuda" else "none")
    out = Path(args.out or ("runs/bench_tiny.json" if args.tiny else "results/bench.json"))
    if args.tiny and out.resolve() == Path(args.repo, "results/bench.json").resolve():
        raise SystemExit("tiny rows do not belong in results/bench.json")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: extra threads only contend on a shared CPU
    prov = provenance(args.repo, device)
    peak = peak_flops(prov["device"]) if device.type == "cuda" else None
    samples, notes = length_samples(args.repo, args.tokenizer, args.synthetic)
    print(f"device {prov['device']}  peak bf16 {peak}  quant {quant}  shape {'tiny' if args.tiny else 'llama2-7b'}")

    t0 = time.perf_counter()
    model = add_lora(build_model(shape, device, quant))
    sync(device)
    build_s = time.perf_counter() - t0
    n_params = param_counts(shape, model)
    print(f"model built in {build_s:.1f} s: N_base {n_params[0] / 1e9:.3f} B, N_lora {n_params[1] / 1e6:.2f} M"
          + (f", {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated" if device.type == "cuda" else ""))

    phases = [p for p in args.phases.split(",") if p]
    configs = [c for c in args.configs.split(",") if c]
    tag = dict(prov, shape="tiny" if args.tiny else "llama2-7b", quant=quant, peak_bf16_flops=peak)
    results, rows = {}, []
    for phase in phases:
        for config in configs:
            res = run_one(model, phase, config, samples, args, device, shape["vocab_size"], peak, n_params)
            results[(phase, config)] = res
            rows.append(bench_row(phase, config, res, tag, notes[phase]))
            print(describe(phase, config, res), flush=True)
            write_json(out, merge_rows(out, rows))  # a killed run keeps what it measured
    for phase in phases:
        plain, tuned = results.get((phase, "plain"), {}), results.get((phase, "tuned"), {})
        if plain.get("useful_tokens_per_s") and tuned.get("useful_tokens_per_s"):
            print(f"{phase}: tuned / plain useful tokens/s = "
                  f"{tuned['useful_tokens_per_s'] / plain['useful_tokens_per_s']:.2f}x")
    if args.pipeline:
        pipe = pipeline(model, results, samples, args, device, shape["vocab_size"], build_s)
        rows.append(dict(pipe, config=args.pipeline_config, **tag))
        print("pipeline:", json.dumps({k: pipe.get(k) for k in ("pipeline_7b_wall_s", "per_stage_s", "error")}))
    write_json(out, merge_rows(out, rows))
    print(f"wrote {len(rows)} rows to {out}")
    return rows


def bench_row(phase, config, res, tag, lengths_note):
    head = ("peak_reserved_gib", "peak_allocated_gib", "useful_tokens_per_s", "mfu")
    return dict(phase=phase, config=config, **{k: res.get(k) for k in head}, **tag,
                lengths=lengths_note, **{k: v for k, v in res.items() if k not in head})


def describe(phase, config, res):
    if "error" in res:
        return f"{phase} {config:6s} ERROR {res['error']}"
    gib = lambda k: f"{res[k]:.2f}" if res.get(k) is not None else "n/a"  # noqa: E731
    mfu = f"{res['mfu']:.1%}" if res["mfu"] is not None else "n/a"
    st = res["settings"]
    return (f"{phase} {config:6s} {res['useful_tokens_per_s']:9.0f} useful tok/s  "
            f"{res['s_per_step']:.3f} s/step  padding {res['padding_fraction']:.0%}  "
            f"peak reserved {gib('peak_reserved_gib')} GiB  allocated {gib('peak_allocated_gib')} GiB  "
            f"MFU {mfu}  [{st['attn']}, {st['layout']}, micro {st['micro']} x {st['accum']}]")


if __name__ == "__main__":
    main()
