"""askdraft_bench: an axolotl plugin that measures a training run from the inside, per process.

In a recipe (tools/askdraft/multi_gpu.py adds it):
    plugins:
      - askdraft_bench.BenchPlugin

Every process writes OUTPUT_DIR/bench/rank<R>.json at the end of training:
    rank, world, device, step_s (wall seconds of each optimizer step, the device synchronised at
    its end), tokens (this process's non-pad tokens of each step: the attention-mask sum of its
    micro-batches), peak_reserved_bytes (torch.cuda.max_memory_reserved of its GPU; None on a CPU),
    peak_rss_bytes, and log_history (the Trainer's, the same on every process).
The token count is a device tensor added up a micro-step and read once a step, where the step is
timed (no extra host sync inside the step).
"""
import json
import os
import resource
import time

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

PLUGIN = "askdraft_bench.BenchPlugin"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class BenchCallback(TrainerCallback):
    def __init__(self, trainer):
        import torch

        self.trainer, self.step_s, self.tokens, self._pending, self._t0 = trainer, [], [], None, None
        inner = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            if mask is not None:
                n = mask.detach().sum()
                self._pending = n if self._pending is None else self._pending + n
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = training_step  # an instance attribute: the Trainer calls self.training_step
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.step_s.append(time.perf_counter() - self._t0)
        self.tokens.append(int(self._pending.item()) if self._pending is not None else None)
        self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        acc = self.trainer.accelerator
        cuda = torch.cuda.is_available()
        row = {
            "rank": acc.process_index, "world": acc.num_processes,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "distributed_type": str(acc.distributed_type),
            "step_s": self.step_s, "tokens": self.tokens,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "log_history": state.log_history,
        }
        out = os.path.join(args.output_dir, "bench")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"rank{acc.process_index}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(row, f)
        os.replace(path + ".tmp", path)


class BenchPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        if PLUGIN not in (cfg.get("plugins") or []):  # a later config in the same process
            return []
        return [BenchCallback(trainer)]
