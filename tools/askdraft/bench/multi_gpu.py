"""`askdraft bench multi-gpu`: phase B or C on one GPU, on N GPUs with DDP, and on N GPUs with DeepSpeed
ZeRO-2, each a real `axolotl train` of the phase's recipe; one JSON (+ PNG) comparing them.

Every mode keeps the effective batch at 32 sequences: micro-batch 4, accumulation 8 / world
(world = 1 for `1gpu`). The recipe is recipes/phase_{b,c}.yaml with --profile files and these
overrides: the model, a data subset (C: 8 x steps pairs, so max-steps covers the recipe's four
epochs and its whole beta / Cal / Dr schedule; B: 32 x steps rows, one epoch), max_steps,
logging every step, no checkpoints, and the askdraft_bench plugin (plugins/askdraft_bench), whose
callback writes each process's step times, non-pad tokens and peak GPU memory.

Per mode the JSON has: the per-step loss (and, for C, askdraft/cal_shift, askdraft/pairs_dropped
and askdraft/pairs_dropped_total, rewards/margins), the median step time after --warmup steps
(the slowest process's time of each step), useful tokens/s (the non-pad tokens of every process
over the same steps / their time), peak reserved GPU memory of each process, the scaling factor
(tokens/s over 1gpu's) and the largest |loss - 1gpu loss| over the first --compare-steps steps.
A mode that fails is recorded with its error and the log's tail; the others still run.

    askdraft bench multi-gpu --phase c --base models/base/SmolLM2-135M-Instruct --pairs data/pairs.jsonl \\
        --profile gpu-fast --profile dpo-fast --name smollm2-c
    askdraft bench multi-gpu --random-model llama2-7b --base DIR ...   # DIR's tokenizer, random 7B weights
"""
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from askdraft import REPO_ROOT, git_commit
from askdraft.bench import inputs
from askdraft.command import stop_process_group
from askdraft.io import InputError, read_jsonl, write_json, write_jsonl
from askdraft.recipe import compose, write

MODES = ("1gpu", "ddp", "zero2")
ZERO2 = REPO_ROOT / "recipes" / "multi_gpu" / "zero2.json"
BENCH_PLUGIN = "askdraft_bench.BenchPlugin"
EFFECTIVE_BATCH, MICRO = 32, 4
C_EPOCHS = 4  # phase_c.yaml's schedule
SHAPES = {"llama2-7b": inputs.LLAMA2_7B}
STEP_KEYS = ("loss", "grad_norm", "learning_rate", "askdraft/cal_shift", "askdraft/pairs_dropped",
             "askdraft/pairs_dropped_total", "askdraft/epoch", "askdraft/beta", "rewards/margins")


def compose_recipe(phase, mode, base, data, out_dir, work, profiles, steps, world, extra=()):
    """The phase's recipe for one mode (a dict), as `askdraft recipe` would write it."""
    accumulation = EFFECTIVE_BATCH // (MICRO * world)
    if accumulation * MICRO * world != EFFECTIVE_BATCH:
        raise InputError("--gpus", None, f"{world} processes do not divide the batch of {EFFECTIVE_BATCH} (micro {MICRO})")
    sets = [f"base_model={base}", f"datasets.0.path={data}", f"output_dir={out_dir}",
            f"dataset_prepared_path={work / 'prepared' / phase}", f"micro_batch_size={MICRO}",
            f"gradient_accumulation_steps={accumulation}", f"max_steps={steps}", "logging_steps=1",
            "save_strategy=no", "dataloader_num_workers=0"]
    if phase == "b":
        sets.append("lora_model_dir=null")  # phase A's adapter is not part of the benchmark
    if mode == "zero2":
        sets.append(f"deepspeed={ZERO2}")
    cfg = compose(REPO_ROOT / "recipes" / f"phase_{phase}.yaml", profiles, [*sets, *extra])
    cfg["plugins"] = [*(cfg.get("plugins") or []), BENCH_PLUGIN]
    return cfg


def launch_command(recipe, mode, world, cpu):
    axolotl = [sys.executable, "-m", "axolotl.cli.main", "train", str(recipe)]
    if mode == "1gpu":
        return [*axolotl, "--launcher", "python"]
    return [*axolotl, "--launcher", "accelerate", "--", "--num_processes", str(world), *(["--cpu"] if cpu else [])]


def mode_env(mode, gpus, cpu):
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tools"), str(REPO_ROOT / "plugins"),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    # axolotl starts `accelerate launch` from PATH: this interpreter's scripts first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["CUDA_VISIBLE_DEVICES"] = "" if cpu else ",".join(gpus[:1] if mode == "1gpu" else gpus)
    return env  # NCCL_* (e.g. NCCL_NVLS_ENABLE) pass through as the machine sets them


def run_group(cmd, env, out, timeout=None):
    """Run cmd in its own process group; past `timeout` seconds the whole group (accelerate's
    workers too, which would hold the GPUs) is killed. Returns the exit code or "timeout"."""
    import signal

    p = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(p, 30)
        return "timeout"
    except BaseException:  # Ctrl-C: take the workers down with us
        os.killpg(p.pid, signal.SIGKILL)
        raise


def summarize(ranks, warmup, phase):
    """One mode's numbers from its processes' bench rows."""
    ranks = sorted(ranks, key=lambda r: r["rank"])
    logs = [e for e in ranks[0]["log_history"] if "loss" in e and "step" in e]
    steps = [{"step": e["step"], **{k: e[k] for k in STEP_KEYS if k in e}} for e in logs]
    n = min(len(r["step_s"]) for r in ranks)
    step_s = [max(r["step_s"][i] for r in ranks) for i in range(n)]  # a step ends when its slowest process does
    timed = range(min(warmup, max(n - 1, 0)), n)
    tokens = [sum(r["tokens"][i] or 0 for r in ranks) for i in range(n)]
    seconds = sum(step_s[i] for i in timed)
    out = {
        "processes": len(ranks), "devices": [r["device"] for r in ranks],
        "distributed_type": ranks[0].get("distributed_type"), "steps": steps,
        "step_s": step_s, "step_s_median": statistics.median(step_s[i] for i in timed) if n else None,
        "timed_steps": len(timed), "useful_tokens_per_step": tokens,
        "tokens_per_s": sum(tokens[i] for i in timed) / seconds if seconds else None,
        "peak_reserved_gib": [r["peak_reserved_bytes"] / 2**30 if r["peak_reserved_bytes"] is not None else None
                              for r in ranks],
        "peak_rss_gib": [r["peak_rss_bytes"] / 2**30 for r in ranks],
    }
    if phase == "c":
        out["pairs_dropped_total"] = sum(e.get("askdraft/pairs_dropped_total", 0) for e in logs)
    return out


def compare(modes, compare_steps):
    """Scaling factor and loss differences of every mode against 1gpu (when both ran)."""
    ref = modes.get("1gpu")
    if not ref or "error" in ref:
        return
    ref_loss = {s["step"]: s["loss"] for s in ref["steps"]}
    for name, m in modes.items():
        if name == "1gpu" or "error" in m:
            continue
        if ref.get("tokens_per_s") and m.get("tokens_per_s"):
            m["scaling_vs_1gpu"] = m["tokens_per_s"] / ref["tokens_per_s"]
        diffs = [abs(s["loss"] - ref_loss[s["step"]]) for s in m["steps"][:compare_steps] if s["step"] in ref_loss]
        m["max_abs_loss_diff_vs_1gpu"] = max(diffs) if diffs else None
        m["loss_diff_steps"] = len(diffs)
        if "pairs_dropped_total" in ref:
            m["pairs_dropped_equal_1gpu"] = m.get("pairs_dropped_total") == ref["pairs_dropped_total"]


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {k: m for k, m in result["modes"].items() if "error" not in m}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, m in ok.items():
        a.plot([s["step"] for s in m["steps"]], [s["loss"] for s in m["steps"]], marker="o", ms=3, label=name)
    a.set_xlabel("optimizer step"), a.set_ylabel("loss"), a.legend(), a.set_title(f"{result['name']}: loss")
    b.bar(list(ok), [m.get("tokens_per_s") or 0 for m in ok.values()])
    b.set_ylabel("useful tokens / s"), b.set_title(f"throughput (after {result['warmup']} steps)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("torch", "transformers", "accelerate", "trl", "peft", "axolotl", "deepspeed", "bitsandbytes"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def device_names(gpus, cpu):
    if cpu:
        return ["cpu"]
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
                           capture_output=True, text=True, check=True).stdout
        names = dict(line.split(", ", 1) for line in q.strip().splitlines())
        return [names.get(g, f"gpu {g}") for g in gpus]
    except (OSError, subprocess.CalledProcessError):
        return [f"gpu {g}" for g in gpus]


def run(phase, base, name, data=None, modes=MODES, gpus=("0", "1"), steps=16, warmup=3, compare_steps=8,
        profiles=(), extra=(), random_model=None, work="runs/multi_gpu", out="results/multi_gpu", cpu=False,
        split=None, timeout=None):
    if phase not in ("b", "c"):
        raise InputError("--phase", None, f"phase must be b or c, got {phase!r}")
    if phase == "c" and steps % C_EPOCHS:
        raise InputError("--steps", None, f"phase C needs steps divisible by {C_EPOCHS} (one block a schedule epoch)")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError("--modes", None, f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    base = Path(base).resolve()
    if not (base / "config.json").is_file():
        raise InputError(base, None, "base model directory not found")
    gpus = list(gpus)
    world = len(gpus)
    root = Path(work).resolve()
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    t_model = time.time()
    if random_model:  # one model for every run of this shape (and make bench's)
        base = inputs.build_random_model(inputs.RANDOM_7B_DIR, base, SHAPES[random_model])
    t_model = time.time() - t_model

    # the data subset: C, 8 x steps pairs (steps / 4 optimizer steps an epoch, 4 epochs); B, 32 x steps rows
    rows_needed = EFFECTIVE_BATCH * steps // (C_EPOCHS if phase == "c" else 1)
    if data is None and phase == "c":
        split = Path(split or REPO_ROOT / "data" / "strategyqa_train_cot.jsonl")
        rows = inputs.teacher_pairs(split, base)
        data_source = f"teacher pairs from {split}"
    else:
        data = Path(data or REPO_ROOT / "data" / "sft" / "phase_b.jsonl")
        if not data.is_file():
            raise InputError(data, None, "data file not found (make data sft-data / pairs)")
        rows = read_jsonl(data, allow_extra=True) if phase == "b" else [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
        data_source = str(data)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if len(rows) < rows_needed:
        raise InputError(data or split, None, f"{len(rows)} rows, the run needs {rows_needed}")
    subset = work / f"data_{phase}.jsonl"
    write_jsonl(subset, rows[:rows_needed])

    result = {"name": name, "phase": phase, "base": str(base), "random_model": random_model,
              "random_model_build_s": round(t_model, 1) if random_model else None,
              "data": data_source, "rows": rows_needed, "steps": steps, "warmup": warmup,
              "compare_steps": compare_steps, "effective_batch": EFFECTIVE_BATCH, "micro_batch": MICRO,
              "gpus": gpus if not cpu else [], "cpu": cpu, "world": world, "profiles": list(profiles),
              "extra_overrides": list(extra), "commit": git_commit(), "devices": device_names(gpus, cpu),
              "versions": versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith("NCCL_")}, "modes": {}}
    for mode in modes:
        w = 1 if mode == "1gpu" else world
        out_dir = work / mode
        shutil.rmtree(out_dir, ignore_errors=True)
        cfg = compose_recipe(phase, mode, base, subset, out_dir, work, profiles, steps, w, extra)
        recipe = work / f"phase_{phase}_{mode}.yaml"
        write(cfg, recipe, f"recipes/phase_{phase}.yaml")
        cmd = launch_command(recipe, mode, w, cpu)
        log = work / f"{mode}.log"
        t0 = time.time()
        print(f"== {name} {mode}: {' '.join(cmd)}", flush=True)
        with open(log, "w", encoding="utf-8") as f:
            code = run_group(cmd, mode_env(mode, gpus, cpu), f, timeout)
        entry = {"command": " ".join(cmd), "recipe": str(recipe),
                 "recipe_sha256": hashlib.sha256(recipe.read_bytes()).hexdigest(), "wall_s": round(time.time() - t0, 1),
                 "log": str(log)}
        bench = sorted((out_dir / "bench").glob("rank*.json"))
        if code != 0 or len(bench) != w:
            tail = log.read_text(errors="replace")[-3000:]
            entry.update(error=f"exit {code}, {len(bench)} of {w} bench files", log_tail=tail)
            print(f"   {mode} failed: exit {code}; see {log}", flush=True)
        else:
            entry.update(summarize([json.loads(p.read_text()) for p in bench], warmup, phase))
        result["modes"][mode] = entry
    compare(result["modes"], compare_steps)
    out = Path(out)
    write_json(out / f"{name}.json", result)
    if any("error" not in m for m in result["modes"].values()):
        plot(result, out / f"{name}.png")
    return result


def cmd(a):
    r = run(a.phase, a.base, a.name, a.data, a.modes.split(","), a.gpus.split(","), a.steps, a.warmup,
            a.compare_steps, a.profile, a.set, a.random_model, a.work, a.out, a.cpu, a.split, a.timeout)
    for mode, m in r["modes"].items():
        if "error" in m:
            print(f"{mode}: FAILED ({m['error']})")
        else:
            print(f"{mode}: median step {m['step_s_median']:.3f} s, {m['tokens_per_s'] or 0:.0f} tokens/s, "
                  f"scaling {m.get('scaling_vs_1gpu', 1.0):.2f}, max |dloss| {m.get('max_abs_loss_diff_vs_1gpu')}")
    print(Path(a.out) / f"{a.name}.json")
    return 1 if any("error" in m for m in r["modes"].values()) else 0


def add_arguments(p):
    p.add_argument("--phase", required=True, choices=["b", "c"])
    p.add_argument("--base", required=True, help="model dir (with --random-model: the tokenizer's)")
    p.add_argument("--name", required=True, help="results/multi_gpu/NAME.json (and .png)")
    p.add_argument("--data", help="B: SFT rows (default data/sft/phase_b.jsonl); C: pairs (default: teacher "
                   "pairs from --split)")
    p.add_argument("--split", help="C without --data: the split file of the teacher pairs "
                   "(default data/strategyqa_train_cot.jsonl)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--gpus", default="0,1", help="GPU ids of the multi-process modes (1gpu uses the first); "
                   "with --cpu: as many processes as ids")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps a mode (C: a multiple of 4)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--compare-steps", type=int, default=8, help="steps of the loss comparison with 1gpu")
    p.add_argument("--profile", action="append", default=[], help="recipe profile (repeatable), e.g. gpu-fast")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    p.add_argument("--random-model", choices=list(SHAPES), help="random weights of this shape, --base's tokenizer")
    p.add_argument("--work", default="runs/multi_gpu")
    p.add_argument("--out", default="results/multi_gpu")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (gloo): a check of the plumbing")
    p.add_argument("--timeout", type=float, help="seconds a mode may run")
    return p
