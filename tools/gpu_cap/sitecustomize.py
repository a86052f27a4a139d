"""On PYTHONPATH when `make ... GPU_MEM_GIB=N` (the Makefile puts this folder first): every Python
process of a stage caps its GPU memory as it imports torch (askdraft.gpu_cap). The sitecustomize
this one shadows (e.g. the system Python's) runs afterwards, as it would have."""
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    _candidate = os.path.join(_entry or os.getcwd(), "sitecustomize.py")
    if os.path.abspath(_entry or os.getcwd()) != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _candidate)
        try:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        except Exception as _e:  # as Python treats a failing sitecustomize: a warning, not a stop
            print(f"Error in {_candidate}: {_e!r}", file=sys.stderr)
        break

if os.environ.get("ASKDRAFT_GPU_MEM_GIB") or os.environ.get("ASKDRAFT_TORCH_PEAKS"):
    try:
        from askdraft.gpu_cap import install_on_torch_import
    except ImportError as _e:
        print(f"error: ASKDRAFT_GPU_MEM_GIB is set but askdraft is not importable ({_e})", file=sys.stderr)
        os._exit(2)
    install_on_torch_import()
