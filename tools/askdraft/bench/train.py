"""`askdraft bench train`: speed and memory of the recipes themselves, through `axolotl train`:
plain vs tuned, per phase.

    askdraft bench train [--phases A,B,C] [--ablate] [--steps 20] [--model DIR]

plain = recipes/phase_{a,b,c}.yaml as they are, plus only what a bench needs (base_model, data
paths, max_steps, no saving). tuned = the same recipe with recipes/profiles/gpu-7b-fast.yaml
(and dpo-7b-fast.yaml for C), composed by `askdraft recipe`, with A's and B's packs sized to hold
a whole step of 32 rows. --ablate adds phase B rows of tuned minus one switch each and at 16 rows
a pack, and phase C tuned rows at micro 4 x 8 and 16 x 2 and without the shared prompt (TRL's two
rows a pair); --configs names any such row
(tuned-minus-SWITCH, tuned-packN, tuned-microN, tuned-compile). Every composed YAML is kept
under runs/bench/ and hashed in its row.

Default model: a random LlamaForCausalLM at the Llama-2-7B shape with the embedded SmolLM2
tokenizer (vocab 49152: bench/inputs.py), loaded by the recipe's load_in_4bit NF4 path.
--model DIR benches any model dir instead (e.g. the embedded 135M with --profile gpu-fast).

Each row trains in a fresh Python process (python -m askdraft.bench.train_row; the model is built
once, here): axolotl's LoRA kernels (LlamaAttention.forward calls self.apply_qkv), Liger and the
attention patches change transformers' classes process-wide, so in one process they leaked into
later rows (rows without them failed, and their timings were not those of their own switches).
Per row: --warmup untimed optimizer steps, then --steps timed ones (train_row: GPU-synchronised,
tokens counted from the batches). useful tokens = non-padding tokens trained (DPO: chosen and
rejected rows); FLOPs and MFU as bench/train_stats.py counts them. Rows go to --out (schema 2:
{"schema": 2, "runs": {run_id: versions...}, "rows": [...]}, merged by device/model/phase/config).
"""
import codecs
import datetime
import fcntl
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from askdraft import REPO_ROOT, git_commit
from askdraft.bench.train_stats import (MEM_LIMIT_GIB, RECIPES, ROWS_PER_STEP, base_params,
                                       flops_per_useful_token, peak_flops, pipeline_estimate, plot,
                                       print_summary, step_stats)
from askdraft.io import InputError, write_json

SCHEMA = 2
TUNED_PROFILES = {"A": ["gpu-7b-fast"], "B": ["gpu-7b-fast"], "C": ["gpu-7b-fast", "dpo-7b-fast"]}
ROWS_PER_PACK = {"A": 32, "B": 32}   # tuned packs: one micro-batch holds this many rows (a whole step)
LIGER_KEYS = ("liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")
KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")
# tuned minus one switch: the keys that turn it off (packing / big_micro depend on the data)
ABLATIONS = ["liger", "lora_kernels", "fused_adamw", "sdpa", "packing", "big_micro"]
C_ABLATIONS = ["shared_prompt"]  # phase C's tuned minus one switch
C_MICRO = [4, 16]  # phase C has no packing: --ablate adds tuned rows at these micro-batches (tuned: 8; 32 pairs a step)
B_PACKS = [16]     # --ablate adds phase B rows with this many rows a pack (tuned: 32, one pack a step)
# one-switch rows and their phase (tuned-compile: tuned plus axolotl's torch_compile)
ROW_PHASE = {"tuned-minus-": "B", "tuned-pack": "B", "tuned-micro": "C", "tuned-compile": "B"}
ABLATE_ROWS = ([f"tuned-minus-{s}" for s in ABLATIONS] + [f"tuned-pack{n}" for n in B_PACKS]
               + [f"tuned-micro{m}" for m in C_MICRO] + [f"tuned-minus-{s}" for s in C_ABLATIONS])
ABLATION_OFF = {"liger": {k: False for k in LIGER_KEYS}, "lora_kernels": {k: False for k in KERNEL_KEYS},
                "fused_adamw": {"optimizer": "adamw_torch"}, "sdpa": {"attn_implementation": "eager"},
                "shared_prompt": {"askdraft_shared_prompt": False}}


# ---------------------------------------------------------------------------- recipes
def plan(phases, ablate, configs=("plain", "tuned")):
    """(phase, config) in run order. configs: plain, tuned and any one-switch row of ROW_PHASE's
    kinds (tuned-minus-SWITCH, tuned-packN, tuned-microN, tuned-compile); --ablate adds ABLATE_ROWS."""
    rows = [(p, c) for c in ("plain", "tuned") if c in configs for p in phases]
    extra = [c for c in configs if c not in ("plain", "tuned")]
    if "tuned" in configs and ablate:
        extra += [c for c in ABLATE_ROWS if c not in extra]
    for config in extra:
        phase = row_phase(config)
        if phase in phases:
            rows.append((phase, config))
    return rows


def row_phase(config):
    """The phase a one-switch row belongs to; ValueError for a name that is not one."""
    if config == "tuned-compile":
        return ROW_PHASE[config]
    if config.startswith("tuned-minus-") and config.removeprefix("tuned-minus-") in C_ABLATIONS:
        return "C"
    for prefix in ("tuned-minus-", "tuned-pack", "tuned-micro"):
        rest = config.removeprefix(prefix)
        if config.startswith(prefix) and (rest in ABLATIONS if prefix == "tuned-minus-" else rest.isdigit()):
            return ROW_PHASE[prefix]
    raise ValueError(f"unknown row {config!r}: plain, tuned, " + ", ".join(f"{k}..." for k in ROW_PHASE))


def packing_keys(phase, mean_tokens, rows_per_pack, base_len):
    """sequence_len, micro and accumulation for packs of ~rows_per_pack rows, 32 rows a step."""
    from askdraft.recipe import pack_keys
    return pack_keys(mean_tokens, rows_per_pack, base_len, ROWS_PER_STEP)


def row_config(phase, config, ctx):
    """The composed recipe dict of one row."""
    from askdraft.recipe import compose
    profiles = list(ctx["profiles"])
    if config != "plain":
        profiles += TUNED_PROFILES[phase]
    cfg = compose(REPO_ROOT / RECIPES[phase], profiles)
    base_len = cfg["sequence_len"]
    cfg.update({"base_model": str(ctx["model"]), "max_steps": ctx["warmup"] + ctx["steps_of"](config),
                "save_strategy": "no", "logging_steps": 1, "output_dir": str(ctx["work"] / "out" / f"{phase}-{config}"),
                "dataset_prepared_path": str(ctx["work"] / "prepared"), "warmup_ratio": 0.0})
    cfg["datasets"][0]["path"] = str(ctx["data"][phase])
    cfg.pop("lora_model_dir", None)  # phase B continues phase A's adapter; a bench starts fresh
    if config != "plain" and cfg.get("sample_packing"):
        cfg.update(packing_keys(phase, ctx["mean_tokens"][phase], ROWS_PER_PACK[phase], base_len))
    switch = config.removeprefix("tuned-minus-") if config.startswith("tuned-minus-") else None
    if switch in ABLATION_OFF:
        cfg.update(ABLATION_OFF[switch])
    elif switch == "packing":
        cfg.update({"sample_packing": False, "pad_to_sequence_len": False, "sequence_len": base_len,
                    "micro_batch_size": ROWS_PER_PACK[phase],
                    "gradient_accumulation_steps": ROWS_PER_STEP // ROWS_PER_PACK[phase]})
    elif switch == "big_micro":
        cfg.update(packing_keys(phase, ctx["mean_tokens"][phase], 4, base_len))
    elif config.startswith("tuned-pack"):
        cfg.update(packing_keys(phase, ctx["mean_tokens"][phase], int(config.removeprefix("tuned-pack")), base_len))
    elif config.startswith("tuned-micro"):
        micro = int(config.removeprefix("tuned-micro"))
        cfg.update({"micro_batch_size": micro, "gradient_accumulation_steps": ROWS_PER_STEP // micro})
    elif config == "tuned-compile":
        cfg["torch_compile"] = True
    if ctx["cpu"]:
        cfg.update(cpu_keys(cfg))
    return cfg


def cpu_keys(cfg):
    """CPU: no Liger / LoRA kernels (Triton) and no bitsandbytes (recipes/profiles/cpu.yaml)."""
    from askdraft.recipe import load_yaml
    keys = load_yaml(REPO_ROOT / "recipes/profiles/cpu.yaml")
    keys.update({k: False for k in LIGER_KEYS})
    keys["plugins"] = [p for p in cfg.get("plugins", []) if "liger" not in p.lower()]
    keys["gradient_checkpointing"] = cfg.get("gradient_checkpointing", False)
    return keys


def switches(cfg):
    """The speed switches as the composed recipe sets them (None = axolotl's default)."""
    liger = any("liger" in p.lower() for p in cfg.get("plugins", []))
    return {"liger": [k for k in LIGER_KEYS if liger and cfg.get(k)],
            "lora_kernels": [k for k in KERNEL_KEYS if cfg.get(k)] if any(k in cfg for k in KERNEL_KEYS) else None,
            "optimizer": cfg.get("optimizer"), "attn_implementation": cfg.get("attn_implementation"),
            "sample_packing": bool(cfg.get("sample_packing")), "sequence_len": cfg.get("sequence_len"),
            "micro_batch_size": cfg.get("micro_batch_size"),
            "gradient_accumulation_steps": cfg.get("gradient_accumulation_steps"),
            "gradient_checkpointing": cfg.get("gradient_checkpointing"), "load_in_4bit": cfg.get("load_in_4bit"),
            "adapter": cfg.get("adapter"), "precompute_ref_log_probs": cfg.get("precompute_ref_log_probs"),
            "askdraft_free_memory_each_step": cfg.get("askdraft_free_memory_each_step"),
            "askdraft_cudnn_attention": cfg.get("askdraft_cudnn_attention"),
            "askdraft_shared_prompt": cfg.get("askdraft_shared_prompt")}


def write_recipe(cfg, path):
    text = yaml.safe_dump(cfg, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- rows
def row_env():
    """A row process's environment, where the caller's sets neither: expandable segments (fewer
    fragmentation-reserved bytes) and one GPU, since with several visible axolotl's device_map
    "auto" splits the 7B across them (seen on 2 x H200: "mat2 is on cuda:1"); pick another GPU
    with CUDA_VISIBLE_DEVICES."""
    return {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "CUDA_VISIBLE_DEVICES": "0", **os.environ}


def train_row(path, threads):
    """train_row.run(path) in a fresh Python process; its stderr passes through. Returns its
    result, or {"error": ...}: its exception, or if it died without one, its stderr's last line."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "askdraft.bench.train_row", str(path), str(out), "--threads", str(threads)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=row_env())
        text, tail = codecs.getincrementaldecoder("utf-8")("replace"), ""
        for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):  # chunks, not lines: progress bars
            s = text.decode(chunk)
            sys.stderr.write(s)
            sys.stderr.flush()
            tail = (tail + s)[-8192:]
        rc = proc.wait()
        if out.is_file():
            return json.loads(out.read_text(encoding="utf-8"))
    last = next((x for x in reversed(tail.replace("\r", "\n").splitlines()) if x.strip()), "")
    return {"error": f"row process exited with {rc}, no row: {last.strip()}"}


def measure(phase, config, ctx):
    cfg = row_config(phase, config, ctx)
    path = ctx["work"] / "recipes" / f"{phase}-{config}.yaml"
    sha = write_recipe(cfg, path)
    row = {"phase": phase, "config": config, "switches": switches(cfg),
           "recipe": {"path": _rel(path), "sha256": sha, "profiles": ctx["profiles"] + (
               TUNED_PROFILES[phase] if config != "plain" else [])},
           "model": ctx["model_info"], "device": ctx["device"], "commit": ctx["commit"], "date": ctx["date"],
           "run_id": ctx["run_id"]}
    res = train_row(path, ctx["threads"])
    if "error" in res:  # one broken switch must not lose the other rows
        print(f"bench: {phase} {config} failed: {res['error']}", file=sys.stderr)
        return {**row, "error": res["error"][:2000]}
    stats = step_stats(res["steps"], ctx["warmup"])
    ref_forward = phase == "C" and not cfg.get("precompute_ref_log_probs")
    per_token = flops_per_useful_token(ctx["n_base"], res["lora_params"], ref_forward)
    peak = peak_flops(ctx["device"])
    row.update(stats)
    row.update({"peak_reserved_gib": res["peak_reserved_gib"], "peak_allocated_gib": res["peak_allocated_gib"],
                "start_allocated_gib": res["start_allocated_gib"],
                "within_7gib": None if res["peak_reserved_gib"] is None else res["peak_reserved_gib"] <= MEM_LIMIT_GIB,
                "lora_params": res["lora_params"], "flops_per_useful_token": per_token,
                "flop_basis": "4*N_base + 6*N_lora per useful token" + (
                    " + 2*(N_base+N_lora) reference forward" if ref_forward else
                    (" (reference log-probs precomputed before step 0: no reference forward per step)"
                     if phase == "C" else "")),
                "peak_flops": peak,
                "mfu": per_token * stats["useful_tokens_per_s"] / peak if peak else None})
    return row


def _rel(path):
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def row_key(row):
    return row.get("device"), (row.get("model") or {}).get("name"), row.get("phase"), row.get("config")


def merge(path, run_id, run_block, new_rows):
    """Rows of --out with this run's rows replacing those of the same device/model/phase/config."""
    doc = {"schema": SCHEMA, "runs": {}, "rows": []}
    if Path(path).is_file():
        old = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(old, dict) or old.get("schema") != SCHEMA:
            raise InputError(path, None, f"not a schema-{SCHEMA} bench file (hand-loop rows live in "
                                         "results/bench_hand_loop_v1.json); move it away")
        doc = old
    keys = {row_key(r) for r in new_rows}
    rows = [r for r in doc["rows"] if row_key(r) not in keys] + new_rows
    runs = {**doc["runs"], run_id: run_block}
    used = {r.get("run_id") for r in rows}
    return {"schema": SCHEMA, "runs": {k: v for k, v in runs.items() if k in used}, "rows": rows}


# ---------------------------------------------------------------------------- main
def versions():
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "axolotl", "peft", "trl", "bitsandbytes", "liger_kernel", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def first_lines(path, n, out):
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines[:n]), encoding="utf-8")
    return out


def add_arguments(p):
    p.add_argument("--phases", default="A,B,C")
    p.add_argument("--configs", default="plain,tuned",
                   help="plain, tuned and one-switch rows such as tuned-minus-liger, tuned-pack32, tuned-micro8, "
                        "tuned-compile (two processes on two GPUs may share one --out)")
    p.add_argument("--ablate", action="store_true", help="phase B rows of tuned minus one switch each and at 16 rows a pack; phase C tuned rows at micro 4 and 16")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps of a plain / tuned row")
    p.add_argument("--ablate-steps", type=int, default=8, help="timed optimizer steps of an ablation row")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    p.add_argument("--model", help="a model dir to bench (default: the random Llama-2-7B shape)")
    p.add_argument("--profile", action="append", default=[], help="recipe profiles for every row (e.g. cpu)")
    p.add_argument("--work", default="runs/bench", help="model cache, composed recipes, pairs")
    p.add_argument("--repo", default=".", help="where data/ is")
    p.add_argument("--out", default="results/bench.json")
    p.add_argument("--png", default=None, help="default: --out with .png")
    return p


def cmd(a):
    phases = [x.strip().upper() for x in a.phases.split(",") if x.strip()]
    try:
        todo = plan(phases, a.ablate, [c.strip() for c in a.configs.split(",") if c.strip()])
    except ValueError as e:
        raise InputError("--configs", None, str(e)) from None
    import torch

    from askdraft.bench import inputs
    work = Path(a.work).resolve()
    cpu = not torch.cuda.is_available()
    if a.model:
        model = Path(a.model).resolve()
        if not (model / "config.json").is_file():
            raise InputError(model / "config.json", None, "not a model dir")
        name = model.name
    else:
        model = inputs.build_random_model(inputs.RANDOM_7B_DIR, inputs.embedded_tokenizer_dir())
        name = "llama2-7b-shape-random"
    model_cfg = json.loads((model / "config.json").read_text())
    data = {ph: inputs.phase_data(ph, a.repo, work, model) for ph in phases}
    tokens = {ph: inputs.row_tokens(data[ph], model, ph) for ph in phases}
    source = dict(data)
    if "C" in phases:  # TRL scores every pair with the reference first: only those the row trains on
        data["C"] = first_lines(data["C"], ROWS_PER_STEP * (a.warmup + a.steps), work / "pairs_bench.jsonl")
    profiles = a.profile + (["cpu"] if cpu and "cpu" not in a.profile else [])
    quant = "nf4" if "cpu" not in profiles else "none (cpu profile: fp32 LoRA)"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ctx = {"model": model, "work": work, "data": data, "warmup": a.warmup, "cpu": cpu, "profiles": profiles,
           "threads": torch.get_num_threads(),
           "steps_of": lambda c: a.steps if c in ("plain", "tuned") else a.ablate_steps,
           "mean_tokens": {ph: statistics.fmean(t) for ph, t in tokens.items()},
           "n_base": base_params(model_cfg), "device": torch.cuda.get_device_name(0) if not cpu else "cpu",
           "commit": git_commit(), "date": date, "run_id": date,
           "model_info": {"name": name, "dir": _rel(model), "vocab_size": model_cfg["vocab_size"],
                          "shape": {k: model_cfg.get(k) for k in inputs.LLAMA2_7B},
                          "n_base_matmul_params": base_params(model_cfg), "quant": quant,
                          "note": "random weights; tokenizer SmolLM2 (vocab 49152, not Llama-2's 32000)"
                          if not a.model else None}}
    rows = []
    for phase, config in todo:
        print(f"bench: {phase} {config}", file=sys.stderr, flush=True)
        rows.append(measure(phase, config, ctx))
    run_block = {"command": "askdraft bench train",
                 "options": {k: v for k, v in vars(a).items() if k not in ("func", "cmd", "bench_cmd")},
                 "versions": versions(), "device": ctx["device"], "model": name,
                 "data": {ph: {"path": _rel(source[ph]), "trained_from": _rel(data[ph]), "rows": len(tokens[ph]) // (2 if ph == "C" else 1),
                               "mean_tokens": round(ctx["mean_tokens"][ph], 1)} for ph in phases},
                 "env": {"PYTORCH_CUDA_ALLOC_CONF": row_env()["PYTORCH_CUDA_ALLOC_CONF"]}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{a.out}.lock", "w") as lock:  # another bench process (another GPU) may share --out
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = merge(a.out, ctx["run_id"], run_block, rows)
        write_json(a.out, doc)
    png = a.png or str(Path(a.out).with_suffix(".png"))
    plot([r for r in doc["rows"] if r.get("device") == ctx["device"] and r["model"]["name"] == name], png)
    print_summary(rows, pipeline_estimate(doc, ctx["device"], name))
    print(f"-> {a.out}, {png}")
    return 0
