"""`askdraft bench <what>`: how fast and how much GPU memory the project's own runs take, each
measured through the code path its stage uses.

    askdraft bench train        the recipes through `axolotl train`: plain vs tuned, per phase,
                                and one speed switch at a time (train.py; numbers: train_stats.py)
    askdraft bench generation   drafts (batched generation) and eval scoring on a model dir
    askdraft bench multi-gpu    phase B or C on 1 GPU, on N GPUs with DDP and with ZeRO-2
    askdraft bench profile      one `axolotl train` run, stage by stage, with a torch.profiler window

inputs.py builds what they train on (the random Llama-2-7B-shape model and the real rows);
train_row.py is the process of one `bench train` row; step_timer.py is profile's step timer.
`askdraft bench WHAT --help` lists each one's options.
"""
import argparse

COMMANDS = {  # subcommand -> (module of this package, one-line help)
    "train": ("train", "the recipes through axolotl train: plain vs tuned per phase, one switch at a time"),
    "generation": ("generation", "drafts (batched generation) and eval scoring on a model dir"),
    "multi-gpu": ("multi_gpu", "phase B or C on 1 GPU, N GPUs (DDP) and N GPUs (ZeRO-2): one JSON"),
    "profile": ("profile", "one axolotl train run in process: seconds per stage, a torch.profiler window"),
}


def add_cli(sub):
    import importlib

    p = sub.add_parser("bench", help="speed and memory: train, generation, multi-gpu, profile",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    whats = p.add_subparsers(dest="bench_cmd", required=True, metavar="WHAT")
    for name, (module, help) in COMMANDS.items():
        mod = importlib.import_module(f"askdraft.bench.{module}")
        q = whats.add_parser(name, help=help, description=mod.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(q)
        q.set_defaults(func=mod.cmd)
    return p
