"""One benchmark row: `axolotl train CONFIG` in this process (the code path of
`axolotl train CONFIG --launcher python`, as tools/profile_train.py runs it), with a callback
that times every optimizer step (GPU-synchronised) and counts the tokens of the micro-batches
each step trained on, read from the batches themselves: useful = attention_mask != 0, or for
packed batches without a mask, all but the pack's padding tail (packed_counts); total =
input_ids.numel().
The trained model is not saved.

Several rows run in one process: each gets axolotl's plugin registry cleared and the CUDA
cache emptied first. Liger patches transformers' Llama classes for the rest of the process,
so the caller runs every row without Liger before the first row with it (bench.plan).
"""
import gc
import sys
import time

import torch
import transformers


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepMeter(transformers.TrainerCallback):
    """Per optimizer step: seconds, useful and total tokens, sequences, loss."""

    def __init__(self):
        self.steps, self.tokens, self.pad_id = [], [0, 0, 0], None

    def count(self, inputs):
        ids = inputs.get("input_ids")
        if ids is None:
            return
        mask, pos = inputs.get("attention_mask"), inputs.get("position_ids")
        if mask is not None:
            useful, rows = int((mask != 0).sum()), ids.shape[0]
            if pos is not None:  # packed rows: each starts at position 0
                rows = int(((pos == 0) & (mask != 0)).sum())
        elif pos is not None:
            useful, rows = packed_counts(ids, pos, self.pad_id)
        else:
            useful, rows = ids.numel(), ids.shape[0]
        self.tokens = [self.tokens[0] + useful, self.tokens[1] + ids.numel(), self.tokens[2] + rows]

    def on_step_begin(self, args, state, control, **kw):
        sync()
        self.tokens = [0, 0, 0]
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        sync()
        useful, total, rows = self.tokens
        self.steps.append({"s": time.perf_counter() - self.start, "useful": useful, "total": total, "rows": rows})

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs and self.steps:
            self.steps[-1]["loss"] = float(logs["loss"])


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


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reset_process_state():
    from axolotl.integrations.base import PluginManager
    if PluginManager._instance is not None:
        PluginManager._instance.plugins.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run(config_path):
    """Train CONFIG in process; returns {steps, lora_params, peak_*_gib, start_allocated_gib,
    ref_precomputed_s}."""
    import axolotl.cli.train
    import axolotl.train

    reset_process_state()
    gib = 2 ** 30
    start_allocated = torch.cuda.memory_allocated() / gib if torch.cuda.is_available() else None
    meter, seen = StepMeter(), {}
    build, save = axolotl.train.setup_model_and_trainer, axolotl.train.save_trained_model

    def build_and_hook(*a, **kw):
        result = build(*a, **kw)
        trainer = result[0]
        trainer.add_callback(meter)
        step = trainer.training_step

        def counted_step(model, inputs, *rest, **kwargs):
            meter.count(inputs)
            return step(model, inputs, *rest, **kwargs)

        trainer.training_step = counted_step
        seen["lora_params"] = count_trainable(trainer.model)
        meter.pad_id = result[2].pad_token_id
        return result

    argv = sys.argv
    axolotl.train.setup_model_and_trainer = build_and_hook
    axolotl.train.save_trained_model = lambda *a, **kw: None
    sys.argv = [argv[0]]  # do_cli parses the command line for its own flags
    try:
        axolotl.cli.train.do_cli(config=str(config_path))
    finally:
        sys.argv = argv
        axolotl.train.setup_model_and_trainer, axolotl.train.save_trained_model = build, save
    out = {"steps": meter.steps, "lora_params": seen.get("lora_params"), "start_allocated_gib": start_allocated,
           "peak_reserved_gib": None, "peak_allocated_gib": None}
    if torch.cuda.is_available():
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / gib
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / gib
    reset_process_state()
    return out
