"""`askdraft bench profile`: one `axolotl train` run in this process, where the wall time goes,
stage by stage.

    askdraft bench profile runs/gpu-fast/phase_a.yaml --out results/profile/phase_a [--steps 10:15]

Writes OUT/profile.json: seconds spent importing, loading the config, preparing the dataset,
building model + trainer, training (and per optimizer step, synchronised with the GPU), and
saving; and OUT/ops.txt: the torch.profiler table (CPU and CUDA time per op) over the step
window --steps, plus how busy the GPU was in that window. The same code path as
`axolotl train CONFIG --launcher python`.
"""
import json
import pathlib
import time


def timed(module, name, label, phases):
    """Replace module.name by a wrapper adding its wall time to phases[label]."""
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[label] = round(phases.get(label, 0.0) + time.perf_counter() - start, 3)

    setattr(module, name, wrapper)


def add_arguments(ap):
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", default="10:15", help="optimizer-step window for torch.profiler, FIRST:LAST")
    return ap


def cmd(args):
    t0 = time.perf_counter()  # the imports are the run's first stage
    import torch

    import axolotl.cli.config
    import axolotl.cli.train  # noqa: F401  (train_in_process runs its do_cli)
    import axolotl.common.datasets
    import axolotl.train
    from askdraft.bench.step_timer import StepTimer
    from askdraft.io import InputError, write_json
    from askdraft_bench import train_in_process
    import_s = time.perf_counter() - t0

    try:
        first, last = (int(x) for x in args.steps.split(":"))
    except ValueError:
        raise InputError("--steps", None, f"{args.steps!r}: FIRST:LAST optimizer steps, e.g. 10:15") from None
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = StepTimer(first, last, out / "ops.txt")
    phases: dict[str, float] = {}
    timed(axolotl.cli.config, "load_cfg", "load_config", phases)
    timed(axolotl.common.datasets, "load_datasets", "prepare_dataset", phases)
    timed(axolotl.common.datasets, "load_preference_datasets", "prepare_dataset", phases)
    timed(axolotl.train, "execute_training", "train", phases)
    timed(axolotl.train, "save_trained_model", "save", phases)
    timed(axolotl.train, "setup_model_and_trainer", "build_model_and_trainer", phases)
    start = time.perf_counter()
    train_in_process(args.config, lambda result: timer.attach(result[0]))
    steps = [round(x, 4) for x in timer.step_s]
    report = {
        "config": args.config,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "import_s": round(import_s, 3),
        "run_s": round(time.perf_counter() - start, 3),
        "phases_s": phases,
        "optimizer_steps": len(steps),
        "first_step_s": steps[0] if steps else None,
        "median_step_s": sorted(steps)[len(steps) // 2] if steps else None,
        "step_s": steps,
        "profiler_window": getattr(timer, "window", None),
    }
    write_json(out / "profile.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "step_s"}, indent=2))
    return 0
