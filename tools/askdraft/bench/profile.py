"""Profile one `axolotl train` run in-process: where the wall time goes, stage by stage.

    python tools/profile_train.py runs/gpu-fast/phase_a.yaml --out results/profile/phase_a [--steps 10:15]

Writes OUT/profile.json: seconds spent importing, loading the config, preparing the dataset,
building model + trainer, training (and per optimizer step, synchronised with the GPU), and
saving; and OUT/ops.txt: the torch.profiler table (CPU and CUDA time per op) over the step
window --steps, plus how busy the GPU was in that window. The same code path as
`axolotl train CONFIG --launcher python`.
"""
import argparse
import json
import pathlib
import time

T0 = time.perf_counter()
import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402

import axolotl.cli.config  # noqa: E402
import axolotl.cli.train  # noqa: E402
import axolotl.common.datasets  # noqa: E402
import axolotl.train  # noqa: E402

from askdraft.io import write_json  # noqa: E402
from askdraft_bench import StepMeter, train_in_process  # noqa: E402

IMPORT_S = time.perf_counter() - T0
phases: dict[str, float] = {}


def timed(module, name, label):
    """Replace module.name by a wrapper adding its wall time to phases[label]."""
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[label] = round(phases.get(label, 0.0) + time.perf_counter() - start, 3)

    setattr(module, name, wrapper)


class StepTimer(StepMeter):
    """The askdraft_bench StepMeter, with a torch.profiler window over optimizer steps FIRST..LAST."""

    def __init__(self, first, last, ops_path):
        super().__init__()
        self.first, self.last, self.ops_path = first, last, ops_path
        self.prof, self.window_start = None, 0.0

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self.window_start = time.perf_counter()
        super().on_step_begin(args, state, control, **kw)

    def on_step_end(self, args, state, control, **kw):
        super().on_step_end(args, state, control, **kw)
        if self.prof is not None and state.global_step == self.last:
            self.prof.__exit__(None, None, None)
            self.write_ops(time.perf_counter() - self.window_start, state.global_step - self.first)
            self.prof = None

    def write_ops(self, window_s, steps):
        events = self.prof.key_averages()
        # kernels only, as torch's own table totals them: kineto also charges each kernel's time to the
        # CPU op that launched it, so summing every event counted it twice (the H200 ops of 27dd467)
        device_us = sum(e.self_device_time_total for e in events
                        if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        head = (f"window: {steps} optimizer steps, {window_s:.3f} s wall, "
                f"{device_us / 1e6:.3f} s of device kernels ({100 * device_us / 1e6 / window_s:.1f} % busy)\n")
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        text = head + "\n" + events.table(sort_by=sort, row_limit=40) + "\n" + \
            events.table(sort_by="cpu_time_total", row_limit=25)
        with open(self.ops_path, "w") as f:
            f.write(text)
        self.window = {"steps": steps, "wall_s": round(window_s, 3),
                       "device_kernel_s": round(device_us / 1e6, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", default="10:15", help="optimizer-step window for torch.profiler, FIRST:LAST")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first, last = (int(x) for x in args.steps.split(":"))
    timer = StepTimer(first, last, out / "ops.txt")

    timed(axolotl.cli.config, "load_cfg", "load_config")
    timed(axolotl.common.datasets, "load_datasets", "prepare_dataset")
    timed(axolotl.common.datasets, "load_preference_datasets", "prepare_dataset")
    timed(axolotl.train, "execute_training", "train")
    timed(axolotl.train, "save_trained_model", "save")
    timed(axolotl.train, "setup_model_and_trainer", "build_model_and_trainer")
    start = time.perf_counter()
    train_in_process(args.config, lambda result: timer.attach(result[0]))
    steps = [round(x, 4) for x in timer.step_s]
    report = {
        "config": args.config,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "import_s": round(IMPORT_S, 3),
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


if __name__ == "__main__":
    main()
