"""How much does the final answer lean on the student draft? Integrated Gradients (captum)
on the input embeddings for the log-probability of the gold final answer, and the share of
the total absolute attribution that falls on the draft tokens (SPEC "Validation").

Choices, so that numbers from different runs mean the same thing:
- f(prompt embeddings) = sum of log p(answer token | prompt, earlier answer tokens) over the
  tokens of answer_completion(gold), e.g. " yes". Only the prompt's embeddings are
  integrated; the embeddings the answer's own later tokens feed back in are held fixed.
- Baseline (default "pad"): the pad token's embedding (eos where there is no pad, as in
  SmolLM2 where they are the same) at every prompt position, except the tokenizer's special
  tokens (BOS), which keep their real embedding in the baseline too, so BOS gets exactly zero
  attribution: the attention-sink token would otherwise dominate the total and say nothing
  about question vs draft. "zero" (zero embeddings) is offered but converges badly: RMSNorm
  is scale-invariant, so f jumps within alpha ~ sqrt(eps)/rms(embedding) of the zero end of
  the path and 32 steps miss it (tiny Llama: convergence delta 0.06-1.7 at 16-64 steps,
  3e-4 at 256; the pad baseline is at 1e-4 by 32 steps). Watch max_convergence_delta.
- Draft span: the draft's character range in the rendered prompt (found by rendering the
  template, never by searching for the text) mapped through the tokenizer's offset_mapping.
  A token is a draft token iff its character range overlaps the draft's by at least one
  character; a token that straddles the boundary (BPE glues the separator space onto the
  draft's first word: " Llamas") therefore counts as draft. Special tokens (empty offsets)
  never do. No draft gives an empty span and a share of 0.
- share = sum |attr| over draft tokens / sum |attr| over all prompt tokens, attr summed over
  the embedding dimension.
"""
import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from askdraft import models, stats
from askdraft.io import InputError, write_json
from askdraft.records import read_drafts, split_gold
from askdraft.templates import answer_completion, answer_prompt

SENTINEL = "\x00DRAFT\x00"


# ---------------------------------------------------------------- model

def load_model(base, adapter=None, device=None, load_in_4bit=False):
    """(model, tokenizer) in eval mode, the adapter kept apart: askdraft.models.load_model."""
    return models.load_model(base, adapter, device, load_in_4bit)


# ---------------------------------------------------------------- spans and shares

def draft_char_span(question, draft):
    """(prompt, start, end): the rendered prompt and the draft's character range in it."""
    prompt = answer_prompt(question, draft)
    if not draft:
        return prompt, 0, 0
    start = answer_prompt(question, SENTINEL).index(SENTINEL)
    assert prompt[start:start + len(draft)] == draft, "template does not render the draft verbatim"
    return prompt, start, start + len(draft)


def draft_token_span(offsets, char_start, char_end):
    """[first, last) token indices whose characters overlap [char_start, char_end) (see top)."""
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < char_end and b > char_start]
    if not hits:
        return 0, 0
    assert hits == list(range(hits[0], hits[-1] + 1))
    return hits[0], hits[-1] + 1


def draft_share(attributions, span):
    """Share of total |attribution| that falls in the token range span = (first, last)."""
    a = np.abs(np.asarray(attributions, dtype=np.float64))
    total = a.sum()
    return float(a[span[0]:span[1]].sum() / total) if total > 0 else 0.0


def bootstrap_ci(values, seed=0, n_boot=10_000, level=0.95):
    """(mean, low, high): percentile bootstrap CI of the mean (stats.mean_ci)."""
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    r = stats.mean_ci(values, n_boot=n_boot, seed=seed, level=level)
    return r["mean"], r["ci_low"], r["ci_high"]


# ---------------------------------------------------------------- integrated gradients

def encode(tok, question, draft, answer):
    """Prompt ids, offsets, special mask, answer ids and the draft token span."""
    prompt, cs, ce = draft_char_span(question, draft)
    enc = tok(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
    ans = tok(answer_completion(answer), add_special_tokens=False)["input_ids"]
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return dict(prompt=prompt, ids=enc["input_ids"], offsets=offsets, answer_ids=ans,
                special=enc["special_tokens_mask"], span=draft_token_span(offsets, cs, ce),
                draft_chars=(cs, ce))


def answer_logprob_fn(model, answer_ids):
    """f(prompt_embeds [B, P, d]) -> [B]: sum of log-probs of answer_ids after the prompt."""
    emb = model.get_input_embeddings()
    answer_ids = torch.tensor(answer_ids, device=emb.weight.device)
    tail = emb(answer_ids[:-1])[None]  # the answer's own tokens fed back in, held fixed

    def f(prompt_embeds):
        x = torch.cat([prompt_embeds, tail.expand(len(prompt_embeds), -1, -1)], 1)
        logits = model(inputs_embeds=x, use_cache=False).logits.float()
        lp = logits[:, prompt_embeds.shape[1] - 1:].log_softmax(-1)
        return lp.gather(-1, answer_ids.expand(len(x), -1)[..., None]).squeeze(-1).sum(-1)
    return f


def default_internal_batch(model, n_steps):
    """IG path points per forward/backward pass: all of them on a GPU (one pass a question; the
    attributions are the same up to float rounding), 8 on a CPU (memory)."""
    return n_steps if model.device.type == "cuda" else 8


def baseline_token(tok):
    """Id of the token whose embedding is the "pad" baseline."""
    tid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if tid is None:
        raise ValueError("tokenizer has neither pad nor eos token: use baseline='zero'")
    return tid


def attribute(model, tok, question, draft, answer, n_steps=32, baseline="pad",
              internal_batch_size=8):
    """One question's record: tokens, per-token attributions, draft span, share, delta."""
    from captum.attr import IntegratedGradients
    e = encode(tok, question, draft, answer)
    emb = model.get_input_embeddings()
    ids = torch.tensor(e["ids"], device=emb.weight.device)[None]
    x = emb(ids).detach()
    keep = torch.tensor(e["special"], dtype=torch.bool, device=x.device)[None, :, None]
    if baseline not in ("pad", "zero"):
        raise ValueError(f"baseline must be 'pad' or 'zero', got {baseline!r}")
    ref = torch.zeros_like(x) if baseline == "zero" else emb.weight[baseline_token(tok)].detach()
    x0 = torch.where(keep, x, ref.expand_as(x))
    f = answer_logprob_fn(model, e["answer_ids"])
    ig = IntegratedGradients(f)
    attr, delta = ig.attribute(x, baselines=x0, n_steps=n_steps,
                               internal_batch_size=internal_batch_size,
                               return_convergence_delta=True)
    per_token = attr.float().sum(-1)[0].cpu().numpy()
    with torch.no_grad():
        f_in, f_base = f(x).item(), f(x0).item()
    p = e["prompt"]
    tokens = [p[a:b] if b > a else tok.convert_ids_to_tokens(i)
              for i, (a, b) in zip(e["ids"], e["offsets"])]
    return dict(question=question, draft=draft, answer=answer, prompt=p, tokens=tokens,
                attributions=per_token.tolist(), draft_span=list(e["span"]),
                draft_chars=list(e["draft_chars"]), share=draft_share(per_token, e["span"]),
                logprob=f_in, logprob_baseline=f_base, convergence_delta=abs(delta.item()))


# ---------------------------------------------------------------- heatmap

def heatmap(record, path, width=100):
    """PNG of the prompt's tokens coloured by attribution (red +, blue -); draft boxed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    a = np.asarray(record["attributions"])
    scale = np.abs(a).max() or 1.0
    lines, col = [[]], 0
    for i, t in enumerate(record["tokens"]):
        text = t.strip(" ").replace("\n", "\u21b5") or "\u2423"
        if col + len(text) > width and lines[-1]:
            lines.append([])
            col = 0
        lines[-1].append((i, text, col))
        col += len(text) + 1
    fig = plt.figure(figsize=((width + 2) * 0.09, 0.3 * len(lines) + 0.6))
    ax = fig.add_axes([0, 0, 1, 1])
    cmap, (d0, d1) = plt.get_cmap("bwr"), record["draft_span"]
    for row, items in enumerate(lines):
        for i, text, c in items:
            ax.text(c, -row, text, family="monospace", fontsize=9, va="center",
                    bbox=dict(facecolor=cmap(0.5 + 0.5 * a[i] / scale), pad=1.5,
                              edgecolor="black" if d0 <= i < d1 else "none", linewidth=0.8))
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-len(lines) + 0.5, 0.5)
    ax.axis("off")
    ax.set_title(f"answer {record['answer']!r}: draft share {record['share']:.1%} "
                 "(draft tokens boxed)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the stage

def load_rows(drafts, dev=None, limit=None):
    """Drafts rows with a checked gold answer (row "answer", else the dev file's teacher_final)."""
    gold = split_gold(dev) if dev is not None else None
    # records.read_drafts: answers are labels (case-insensitive) that must agree with the dev file
    rows = read_drafts(drafts, gold=gold, gold_path=dev, unknown="keep")
    for r in rows[:limit]:
        if "answer" not in r:
            if gold is None or r["question"] not in gold:
                why = "not in the dev file" if dev else "no 'answer' field and no --dev file"
                raise InputError(drafts, r["_line"], f"no gold answer: question {why}")
            r["answer"] = gold[r["question"]]
    return rows[:limit]


def run(args):
    rows = load_rows(args.drafts, args.dev, args.limit)
    model, tok = load_model(args.base, args.adapter, load_in_4bit=args.load_in_4bit)
    max_len = getattr(model.config, "max_position_embeddings", None)
    for r in rows:  # fail before the slow part, not halfway through it
        e = encode(tok, r["question"], r["draft"], r["answer"])
        if max_len and len(e["ids"]) + len(e["answer_ids"]) > max_len:
            raise InputError(args.drafts, r["_line"],
                             f"prompt + answer longer than {max_len} tokens")
    records = []
    for r in tqdm(rows, desc="attribution", unit="q"):
        rec = attribute(model, tok, r["question"], r["draft"], r["answer"],
                        n_steps=args.n_steps, baseline=args.baseline,
                        internal_batch_size=args.internal_batch_size or default_internal_batch(model, args.n_steps))
        records.append({"id": r.get("id", r["_line"]), **rec})
    mean, lo, hi = bootstrap_ci([r["share"] for r in records], seed=args.seed)
    if args.heatmaps:
        for rec in records[:args.num_heatmaps]:
            name = re.sub(r"[^\w.-]", "_", str(rec["id"]))
            heatmap(rec, Path(args.heatmaps) / f"attribution_{name}.png")
    base_desc = ("zero embeddings" if args.baseline == "zero" else
                 f"embedding of {tok.convert_ids_to_tokens(baseline_token(tok))!r}")
    write_json(args.out, dict(
        model=str(args.base), adapter=args.adapter and str(args.adapter), n=len(records),
        n_steps=args.n_steps, baseline=f"{base_desc}; special tokens kept",
        seed=args.seed, mean_share=mean, ci_low=lo, ci_high=hi,
        max_convergence_delta=max(r["convergence_delta"] for r in records),
        per_question=records))
    print(f"draft share {mean:.1%} [{lo:.1%}, {hi:.1%}] over {len(records)} questions"
          f" -> {args.out}")
    return 0


def _at_least(lo):
    def parse(s):
        if int(s) < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {s}")
        return int(s)
    return parse


def add_arguments(p):
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --base")
    p.add_argument("--drafts", required=True, help="drafts JSONL {id?, question, draft, answer?}")
    p.add_argument("--dev", help="gold JSONL {question, teacher_final} for rows without 'answer'")
    p.add_argument("--limit", type=_at_least(1), help="first N drafts only")
    p.add_argument("--n-steps", type=_at_least(1), default=32,
                   help="IG integration steps (default 32)")
    p.add_argument("--internal-batch-size", type=_at_least(1),
                   help="IG path points per forward/backward pass (default: all --n-steps on a GPU, 8 on a CPU)")
    p.add_argument("--baseline", choices=("pad", "zero"), default="pad",
                   help="IG baseline: pad-token (default) or zero embeddings")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--heatmaps", help="directory for heatmap PNGs")
    p.add_argument("--num-heatmaps", type=_at_least(0), default=3,
                   help="PNGs for the first N questions")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--load-in-4bit", action="store_true", help="NF4 base (bitsandbytes), as the 7B recipes train it")
    p.set_defaults(func=run)
    return p


def add_cli(subparsers):
    add_arguments(subparsers.add_parser("attribution", help="IG share of the answer on the draft",
                                        description=__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv=None):
    from askdraft.command import standalone
    return standalone(add_arguments, "attention_tools", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
