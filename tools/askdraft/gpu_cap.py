"""A GPU memory cap for every stage process: ASKDRAFT_GPU_MEM_GIB (make GPU_MEM_GIB=7.5).

torch.cuda.set_per_process_memory_fraction(GiB / total) bounds what torch's caching allocator may
reserve on each visible GPU; an allocation past it raises torch.OutOfMemoryError, so a stage that
needs more than an 8 GB card fails instead of passing unseen on a bigger one. The fraction is queued
with torch.cuda._lazy_call, so it takes effect as CUDA initializes, before the first allocation, and
a process that never touches the GPU never initializes CUDA for it. Memory outside torch's allocator
(the CUDA context, libraries calling cudaMalloc themselves) is not capped: the per-stage records
(askdraft.stage_resources) show it as NVML's process figure beside torch's peak reserved.

The Makefile puts tools/gpu_cap/ (a sitecustomize) first on PYTHONPATH when GPU_MEM_GIB is set, so
every Python process of a stage (axolotl train and merge-lora, lm-eval, the askdraft commands,
tools/run_stages.py) installs the cap when it imports torch. With ASKDRAFT_TORCH_PEAKS=FILE set
(tools/run_stages.py sets it per stage), each such process appends its torch peak reserved bytes
to FILE at exit, so the runner can report peaks of processes it did not run itself.
"""
import json
import math
import os
import sys

ENV = "ASKDRAFT_GPU_MEM_GIB"
PEAKS_ENV = "ASKDRAFT_TORCH_PEAKS"
_installed = False
# tools/run_stages.py reads its own peak directly and turns this off; its child processes record theirs
RECORD_PEAKS_AT_EXIT = True


class CapError(ValueError):
    pass


def cap_gib(environ=os.environ):
    """The cap in GiB from ASKDRAFT_GPU_MEM_GIB, None when unset or empty; CapError when not a
    positive number."""
    text = environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        gib = float(text)
    except ValueError:
        raise CapError(f"{ENV}={text!r} (make GPU_MEM_GIB): not a number of GiB, e.g. 7.5") from None
    if not math.isfinite(gib) or gib <= 0:
        raise CapError(f"{ENV}={text!r} (make GPU_MEM_GIB): must be a positive number of GiB")
    return gib


def _apply(gib):
    import torch

    for device in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = min(1.0, gib * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    print(f"askdraft: GPU memory capped at {gib:g} GiB a device ({ENV})", file=sys.stderr, flush=True)


def _record_peak(path):
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    peak = max(torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count()))
    with open(path, "a", encoding="utf-8") as f:  # one short line: appends from processes do not interleave
        f.write(json.dumps({"pid": os.getpid(), "torch_peak_reserved": peak}) + "\n")


def install(environ=os.environ):
    """Queue the cap (if ASKDRAFT_GPU_MEM_GIB is set) and the exit record (if ASKDRAFT_TORCH_PEAKS
    is set); imports torch. Returns the cap in GiB or None. Idempotent."""
    global _installed
    gib = cap_gib(environ)
    peaks = environ.get(PEAKS_ENV)
    if _installed or (gib is None and not peaks):
        return gib
    import atexit

    import torch

    _installed = True
    if gib is not None:
        torch.cuda._lazy_call(lambda: _apply(gib))  # now if CUDA is up, else as it initializes
    if peaks and RECORD_PEAKS_AT_EXIT:
        atexit.register(_record_peak, peaks)
    return gib


def install_on_torch_import():
    """install() right after the process imports torch (from the sitecustomize hook): a process
    that never imports torch pays nothing. A bad ASKDRAFT_GPU_MEM_GIB stops the process (exit 2)."""
    try:
        cap_gib()
    except CapError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(2)  # SystemExit from a sitecustomize is swallowed as a warning
    if "torch" in sys.modules:
        install()
        return
    import importlib.abc
    import importlib.machinery

    class TorchImportHook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_install(module):
                exec_module(module)
                install()
            spec.loader.exec_module = exec_then_install
            return spec

    sys.meta_path.insert(0, TorchImportHook())
