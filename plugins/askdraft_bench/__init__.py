"""askdraft_bench: an axolotl plugin that measures a training run from the inside, per process,
and StepMeter, the one step timer of the project (`askdraft bench train` and `askdraft bench
profile` use it too).

In a recipe (`askdraft bench multi-gpu` adds it):
    plugins:
      - askdraft_bench.BenchPlugin

Every process writes OUTPUT_DIR/bench/rank<R>.json at the end of training:
    rank, world, device, step_s (wall seconds of each optimizer step, the device synchronised at
    its end), tokens (this process's useful tokens of each step, as StepMeter counts them),
    peak_reserved_bytes (torch.cuda.max_memory_reserved of its GPU; None on a CPU),
    peak_rss_bytes, and log_history (the Trainer's, the same on every process).
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


def packed_counts(ids, pos, pad_id):
    """(useful tokens, rows) of packed rows without an attention mask (axolotl's sample packing
    with SDPA): a pack's rows each start at position 0, and its padding is one more such
    segment, all pad tokens, at the end."""
    useful, rows = 0, 0
    for b in range(ids.shape[0]):
        starts = (pos[b] == 0).nonzero().flatten().tolist()
        tail = ids[b, starts[-1]:]
        padded = pad_id is not None and bool((tail == pad_id).all())
        useful += ids.shape[1] - (tail.numel() if padded else 0)
        rows += len(starts) - padded
    return useful, rows


class StepMeter(TrainerCallback):
    """Per optimizer step: wall seconds (the device synchronised at both ends), useful and total
    tokens and sequences of the micro-batches it trained on, and the logged loss. Useful tokens:
    attention_mask != 0; packed rows without a mask: all but the pack's padding tail; total:
    input_ids.numel(). With a mask the counts stay device tensors until the step is timed (no
    host sync inside the step). Where the trainer logs `askdraft/model_positions` (askdraft_dpo: the
    positions the model ran per micro-batch, fewer than total with askdraft_shared_prompt), the step
    also gets model_positions: that mean times its micro-batches. attach(trainer) adds it and counts
    the trainer's batches."""

    def __init__(self, pad_id=None):
        self.steps, self.pad_id, self._counts, self._t0 = [], pad_id, [0, 0, 0, 0], None

    def attach(self, trainer):
        self.count_batches_of(trainer)
        trainer.add_callback(self)
        return self

    def count_batches_of(self, trainer):
        inner = trainer.training_step
        if self.pad_id is None:
            self.pad_id = getattr(getattr(trainer, "processing_class", None), "pad_token_id", None)

        def training_step(model, inputs, *args, **kwargs):
            self.count(inputs)
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = training_step  # an instance attribute: the Trainer calls self.training_step

    def count(self, inputs):
        ids = inputs.get("input_ids")
        if ids is None:
            return
        mask, pos = inputs.get("attention_mask"), inputs.get("position_ids")
        if mask is not None:
            useful, rows = (mask != 0).sum(), ids.shape[0]
            if pos is not None:  # packed rows: each starts at position 0
                rows = ((pos == 0) & (mask != 0)).sum()
        elif pos is not None:
            useful, rows = packed_counts(ids, pos, self.pad_id)
        else:
            useful, rows = ids.numel(), ids.shape[0]
        c = self._counts
        self._counts = [c[0] + useful, c[1] + ids.numel(), c[2] + rows, c[3] + 1]

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._counts = [0, 0, 0, 0]
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        s = time.perf_counter() - self._t0
        useful, total, rows, micro_batches = (int(x) for x in self._counts)
        self.steps.append({"s": s, "useful": useful, "total": total, "rows": rows, "micro_batches": micro_batches})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self.steps:
            self.steps[-1]["loss"] = float(logs["loss"])
            if "askdraft/model_positions" in logs:
                self.steps[-1]["model_positions"] = logs["askdraft/model_positions"] * self.steps[-1]["micro_batches"]

    @property
    def step_s(self):
        return [s["s"] for s in self.steps]


def train_in_process(config_path, on_built, save=True):
    """`axolotl train CONFIG --launcher python` in this process (axolotl's do_cli), calling
    on_built((trainer, model, tokenizer, ...)) once the trainer exists: how `askdraft bench
    train` and `askdraft bench profile` put a StepMeter on the real trainer. save=False skips saving the model."""
    import sys

    import axolotl.cli.train
    import axolotl.train
    build, save_model = axolotl.train.setup_model_and_trainer, axolotl.train.save_trained_model

    def build_and_hook(*a, **kw):
        result = build(*a, **kw)
        on_built(result)
        return result

    argv = sys.argv
    axolotl.train.setup_model_and_trainer = build_and_hook
    if not save:
        axolotl.train.save_trained_model = lambda *a, **kw: None
    sys.argv = [argv[0]]  # do_cli parses the command line for its own flags
    try:
        axolotl.cli.train.do_cli(config=str(config_path))
    finally:
        sys.argv = argv
        axolotl.train.setup_model_and_trainer, axolotl.train.save_trained_model = build, save_model


class BenchCallback(StepMeter):
    def __init__(self, trainer):
        import torch

        super().__init__()
        self.trainer = trainer
        self.count_batches_of(trainer)  # axolotl adds the callback itself (add_callbacks_post_trainer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        acc = self.trainer.accelerator
        cuda = torch.cuda.is_available()
        row = {
            "rank": acc.process_index, "world": acc.num_processes,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "distributed_type": str(acc.distributed_type),
            "step_s": self.step_s, "tokens": [s["useful"] for s in self.steps],
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
