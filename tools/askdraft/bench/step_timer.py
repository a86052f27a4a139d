"""StepTimer: the askdraft_bench StepMeter with a torch.profiler window over a few optimizer steps,
for `askdraft bench profile` (profile.py)."""
import time

import torch
from torch.autograd import DeviceType

from askdraft_bench import StepMeter


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
