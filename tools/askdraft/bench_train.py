"""One benchmark row: `axolotl train CONFIG` in this process (the code path of
`axolotl train CONFIG --launcher python`, as tools/profile_train.py runs it), with a callback
that times every optimizer step (GPU-synchronised) and counts the tokens of the micro-batches
each step trained on, read from the batches themselves: useful = attention_mask != 0, or for
packed batches without a mask, all but the pack's padding tail (packed_counts); total =
input_ids.numel().
The trained model is not saved.

    python -m askdraft.bench_train CONFIG OUT [--threads N]

writes run(CONFIG)'s result to OUT as JSON ({"error": repr} if it raised). One row a process
(bench.py starts one per row): axolotl's LoRA kernels, Liger and attention patches change
transformers' classes for the rest of the process they ran in.
"""
import argparse
import json
import sys
import time
import traceback
from pathlib import Path

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


def run(config_path):
    """Train CONFIG in process; returns {steps, lora_params, peak_*_gib, start_allocated_gib,
    ref_precomputed_s}."""
    import axolotl.cli.train
    import axolotl.train

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
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="one bench row: CONFIG's result to OUT as JSON")
    p.add_argument("config")
    p.add_argument("out")
    p.add_argument("--threads", type=int, help="torch threads (the parent's: a test pins one)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        res = run(a.config)
    except Exception as e:  # the parent makes it an error row
        traceback.print_exc()
        res = {"error": repr(e)}
    Path(a.out).write_text(json.dumps(res), encoding="utf-8")
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
