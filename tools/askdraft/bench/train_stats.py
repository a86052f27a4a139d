"""The numbers of `askdraft bench train`: a row's step statistics, its FLOPs and MFU, the training
time of the pipeline estimated from the rows, the plot and the printed summary (train.py runs the
rows).

MFU = useful tokens/s x FLOPs per useful token / the card's dense bf16 peak, with per token
4*N_base + 6*N_lora (forward 2N; backward activation gradients 2N; only LoRA has weight
gradients), + 2*(N_base + N_lora) when a reference forward runs each step (DPO without
precomputed reference log-probs). N_base = decoder linears + lm_head; attention scores and the
gradient-checkpointing recompute are not counted.
"""
import math
import statistics

import yaml

from askdraft import REPO_ROOT

MEM_LIMIT_GIB = 7.0
ROWS_PER_STEP = 32  # the seed's effective batch: 32 sequences (A/B) / 32 pairs (C)
RECIPES = {"A": "recipes/phase_a.yaml", "B": "recipes/phase_b.yaml", "C": "recipes/phase_c.yaml"}
# dense bf16 tensor-core peak (no sparsity), by device-name substring; first match wins
PEAK_BF16 = [("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
             ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12)]


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def base_params(model_config):
    """Matmul weights of a Llama-style decoder (q, k, v, o, gate, up, down per layer) + lm_head."""
    c = model_config
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head_dim = c.get("head_dim") or h // c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv * head_dim + 3 * h * inter
    return layers * per_layer + c["vocab_size"] * h


def flops_per_useful_token(n_base, n_lora, ref_forward):
    return 4 * n_base + 6 * n_lora + (2 * (n_base + n_lora) if ref_forward else 0)


def peak_flops(device_name):
    return next((v for k, v in PEAK_BF16 if k in device_name), None)


def step_stats(steps, warmup):
    """Timing and token figures of the timed steps (those after `warmup`)."""
    timed = steps[warmup:]
    if not timed:
        raise RuntimeError(f"no timed steps: {len(steps)} ran, {warmup} are warm-up")
    secs = [s["s"] for s in timed]
    useful, total = sum(s["useful"] for s in timed), sum(s["total"] for s in timed)
    losses = [s["loss"] for s in steps if "loss" in s]
    return {"timed_steps": len(timed), "warmup_steps": warmup,
            "step_s": {"median": statistics.median(secs), "p90": percentile(secs, 90),
                       "min": min(secs), "max": max(secs)},
            "step_s_each": secs,
            "useful_tokens_each": [s["useful"] for s in timed],
            "useful_tokens_per_s": statistics.median(s["useful"] / s["s"] for s in timed),
            "useful_tokens_per_s_overall": useful / sum(secs),
            "useful_tokens": useful, "total_tokens": total, "padding_fraction": 1 - useful / total,
            "rows_per_step": statistics.mean(s["rows"] for s in timed),
            # the positions the model ran (askdraft_dpo logs them; fewer than total_tokens with one row a pair)
            "model_positions": (sum(s["model_positions"] for s in timed)
                                if all("model_positions" in s for s in timed) else None),
            "final_loss": losses[-1] if losses else None}


def padding_text(row):
    """A row's padding for the tables: the share of its batches' positions that pad, and where the
    model ran fewer positions than the batches hold (one row a DPO pair), the share it ran."""
    text = f"{100 * row['padding_fraction']:.0f} %"
    ran = row.get("model_positions")
    if ran is not None and ran < 0.995 * row["total_tokens"]:
        text += f" (one row a pair: {100 * ran / row['total_tokens']:.0f} % of those positions run)"
    return text


def covers_pipeline(stages):
    """Whether an estimate's stages are every training phase (a run of one phase is no pipeline)."""
    return set(stages) == set(RECIPES)


def pipeline_estimate(doc, device, model_name, limit_gib=MEM_LIMIT_GIB):
    """Seconds of each training stage = median step s x the recipe's optimizer steps (rows of the
    data the row trained on / 32 x num_epochs), over every row of bench.json `doc` for this device
    and model, whichever run made it: for plain, for tuned, and for the fastest row of each phase
    within limit_gib ("fastest": any one-switch row too). Drafts and eval are not measured here."""
    ok = [r for r in doc["rows"] if (r.get("device"), r["model"]["name"]) == (device, model_name) and "error" not in r]

    def stage(r):
        epochs = yaml.safe_load((REPO_ROOT / RECIPES[r["phase"]]).read_text(encoding="utf-8"))["num_epochs"]
        steps = math.ceil(doc["runs"][r["run_id"]]["data"][r["phase"]]["rows"] / ROWS_PER_STEP) * epochs
        return {"config": r["config"], "optimizer_steps": steps, "s": round(steps * r["step_s"]["median"], 1)}

    picks = {config: {r["phase"]: r for r in ok if r["config"] == config} for config in ("plain", "tuned")}
    fits = [r for r in ok if r["config"] != "plain" and r.get("peak_reserved_gib") is not None
            and r["peak_reserved_gib"] <= limit_gib]
    picks["fastest"] = {ph: min((r for r in fits if r["phase"] == ph), key=lambda r: r["step_s"]["median"])
                        for ph in sorted({r["phase"] for r in fits})}
    out = {}
    for config, rows in picks.items():
        if rows:
            stages = {ph: stage(rows[ph]) for ph in sorted(rows)}
            out[config] = {"stages": stages, "training_s": round(sum(s["s"] for s in stages.values()), 1)}
    return {"estimate": "from measured median step times x the recipes' optimizer steps; "
                        "model loading, drafts and eval not included", **out}


def plot(rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    labels = [f"{r['phase']} {r['config']}" for r in ok]
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(ok)), 7), sharex=True)
    a.bar(labels, [r["useful_tokens_per_s"] for r in ok])
    a.set_ylabel("useful tokens/s (median step)")
    b.bar(labels, [r["peak_reserved_gib"] or 0 for r in ok], color="tab:orange")
    b.axhline(MEM_LIMIT_GIB, color="k", ls="--", lw=1)
    b.set_ylabel("peak reserved GiB")
    b.tick_params(axis="x", rotation=60)
    a.set_title(f"{ok[0]['model']['name']} on {ok[0]['device']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def print_summary(rows, estimate):
    """This run's rows, then the training estimate of each config over every row of the file."""
    for r in rows:
        print(f"{r['phase']} {r['config']:>24}: " + (f"ERROR {r['error'][:120]}" if "error" in r else
              f"{r['step_s']['median']:.3f} s/step, {r['useful_tokens_per_s']:.0f} useful tok/s, "
              f"peak reserved {r['peak_reserved_gib'] or 0:.2f} GiB, pad {padding_text(r)}"))
    for config in ("plain", "tuned", "fastest"):
        if config in estimate:
            print(f"training estimate, {config}: {estimate[config]['training_s'] / 60:.1f} min (" + ", ".join(
                f"{ph} {v['s']:.0f} s at {v['config']}" for ph, v in estimate[config]["stages"].items()) + ")")
