"""One row of `askdraft bench train`: `axolotl train CONFIG` in this process (the code path of
`axolotl train CONFIG --launcher python`, as `askdraft bench profile` runs it), timed by the
askdraft_bench plugin's StepMeter: every optimizer step GPU-synchronised, with the useful and total
tokens of the micro-batches it trained on, read from the batches themselves. The trained model is
not saved.

    python -m askdraft.bench.train_row CONFIG OUT [--threads N]

writes run(CONFIG)'s result to OUT as JSON ({"error": repr} if it raised). One row a process
(bench/train.py starts one per row): axolotl's LoRA kernels, Liger and attention patches change
transformers' classes for the rest of the process they ran in.
"""
import argparse
import json
import sys
import traceback
from pathlib import Path

import torch
from askdraft_bench import StepMeter, train_in_process


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(config_path):
    """Train CONFIG in process; returns {steps, lora_params, peak_*_gib, start_allocated_gib,
    ref_precomputed_s}."""
    gib = 2 ** 30
    start_allocated = torch.cuda.memory_allocated() / gib if torch.cuda.is_available() else None
    meter, seen = StepMeter(), {}

    def hook(result):
        meter.pad_id = result[2].pad_token_id
        meter.attach(result[0])
        seen["lora_params"] = count_trainable(result[0].model)

    train_in_process(config_path, hook, save=False)
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
