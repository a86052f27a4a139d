"""What a pipeline stage used: wall time, peak GPU memory (NVML's per-process figure and torch's
peak reserved), peak CPU RSS of the runner and its children, and bytes written under the checkout.
tools/run_stages.py measures each stage with StageMonitor and keeps the records in
results/<model>/stages.json (record_stage), with the commit, device, GPU cap and recipe hashes.

A sampling thread reads RSS (psutil: this process plus every descendant, summed) and NVML every
`interval` seconds, so a peak shorter than that can be missed. NVML lists a GPU's processes by host
PID; inside a PID namespace (a container) none match, and the per-process figure is then null: the
device's used memory beside it (its peak, and its level when the stage started) still bounds it.
torch's peak reserved comes from this process (torch.cuda.max_memory_reserved) and from every child
Python process, which appends its own at exit (askdraft.gpu_cap, ASKDRAFT_TORCH_PEAKS).

Stages run side by side (run_stages --jobs) each get their own record, marked side_by_side: wall
time, RSS, NVML's per-process figure and torch's peak are the stage's own processes' (a monitor
leaves out the process trees `exclude` names); the device's used memory and the bytes written under
the checkout are what the whole checkout and device saw while the stage ran, its siblings included.
total_wall_s counts such a group once, at its longest stage.
"""
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from askdraft import git_commit, gpu_cap
from askdraft.io import atomic_open

GIB = 2**30
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache"}


def files_state(root):
    """{path: (size, mtime_ns)} of the files under root, leaving out SKIP_DIRS."""
    state, stack = {}, [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in SKIP_DIRS:
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    state[e.path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue
    return state


def bytes_written(before, after):
    """Bytes of the files that are new or changed between two files_state snapshots."""
    return sum(sig[0] for path, sig in after.items() if before.get(path) != sig)


class _Nvml:
    def __init__(self):
        self.handles = []
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no driver, no GPU: the GPU fields stay null
            self.handles = []

    def device_names(self):
        return [self.nvml.nvmlDeviceGetName(h) for h in self.handles]

    def sample(self, pids):
        """(bytes NVML charges to `pids` or None when none of them is listed, bytes used on the devices)."""
        mine, seen, used = 0, False, 0
        for h in self.handles:
            used += self.nvml.nvmlDeviceGetMemoryInfo(h).used
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in pids:
                    seen = True
                    mine += p.usedGpuMemory or 0
        return (mine if seen else None), used


def _torch_cuda():
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch
    return None


class StageMonitor:
    """with StageMonitor(root) as m: run the stage; then m.record is the stage's resources."""

    def __init__(self, root, interval=0.2, exclude=None):
        self.root, self.interval = Path(root), interval
        self.exclude = exclude  # callable: PIDs whose process trees are another stage's
        self.record = None

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.nvml = _Nvml()
        self.peak_rss, self.peak_proc_gpu, self.peak_dev_gpu = 0, None, 0
        self.dev_gpu_start = self.nvml.sample(set())[1] if self.nvml.handles else None
        self.disk_before = files_state(self.root)
        fd, self.peaks_file = tempfile.mkstemp(prefix="askdraft-torch-peaks-", suffix=".jsonl")
        os.close(fd)
        self.saved_peaks_env = os.environ.get(gpu_cap.PEAKS_ENV)
        os.environ[gpu_cap.PEAKS_ENV] = self.peaks_file
        torch = _torch_cuda()
        if torch is not None:
            for d in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(d)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.time()
        self.thread.start()
        return self

    def _sample(self):
        import psutil

        procs = [self.proc]
        try:
            procs += self.proc.children(recursive=True)
        except psutil.Error:
            pass
        if self.exclude is not None:
            others = set()
            for pid in self.exclude():
                try:
                    others |= {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
                except psutil.Error:
                    continue
            procs = [p for p in procs if p.pid not in others]
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if self.nvml.handles:
            mine, used = self.nvml.sample({p.pid for p in procs})
            self.peak_dev_gpu = max(self.peak_dev_gpu, used)
            if mine is not None:
                self.peak_proc_gpu = max(self.peak_proc_gpu or 0, mine)

    def _run(self):
        while True:
            self._sample()
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc):
        wall = time.time() - self.start
        self.stop.set()
        self.thread.join()
        self._sample()
        if self.saved_peaks_env is None:
            os.environ.pop(gpu_cap.PEAKS_ENV, None)
        else:
            os.environ[gpu_cap.PEAKS_ENV] = self.saved_peaks_env
        peaks = [json.loads(line)["torch_peak_reserved"] for line in Path(self.peaks_file).read_text().splitlines()
                 if line.strip()]
        os.unlink(self.peaks_file)
        torch = _torch_cuda()
        if torch is not None:
            peaks.append(max(torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count())))
        gib = lambda b: None if b is None else round(b / GIB, 3)  # noqa: E731
        self.record = {
            "wall_s": round(wall, 1),
            "gpu_process_peak_gib": gib(self.peak_proc_gpu),
            "gpu_device_used_peak_gib": gib(self.peak_dev_gpu) if self.nvml.handles else None,
            "gpu_device_used_at_start_gib": gib(self.dev_gpu_start),
            "torch_peak_reserved_gib": gib(max(peaks)) if peaks else None,
            "cpu_rss_peak_gib": gib(self.peak_rss),
            "disk_written_gib": gib(bytes_written(self.disk_before, files_state(self.root))),
        }
        return False


def device():
    nvml = _Nvml()
    if nvml.handles:
        names = nvml.device_names()
        return f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def recipe_hashes(root, profile):
    """sha256 of the recipes and profiles in recipes/, and of the composed recipes the stages trained
    from (runs/<profile>/*.yaml)."""
    root = Path(root)
    paths = sorted((root / "recipes").glob("*.yaml")) + sorted((root / "recipes" / "profiles").glob("*.yaml"))
    paths += sorted((root / "runs" / (profile or "")).glob("*.yaml"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def record_stage(path, root, stage, record, exit_code=0):
    """Add (or replace) one stage's record in the stages file, rewritten atomically with the run's
    commit, device, GPU cap, profile and recipe hashes as they are now."""
    path = Path(path)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    stages = doc.get("stages", {})
    stages[stage] = {**record, **({"failed_exit": exit_code} if exit_code else {})}
    spans = {}  # a side-by-side group's stages overlap: the group counts once, at its longest
    for name, rec in stages.items():
        group = tuple(rec.get("side_by_side") or (name,))
        spans[group] = max(spans.get(group, 0), rec["wall_s"])
    doc = {
        "commit": git_commit(Path(root)),
        "device": device(),
        "gpu_mem_cap_gib": gpu_cap.cap_gib(),
        "profile": os.environ.get("PROFILE"),
        "base": os.environ.get("BASE_NAME"),
        "recipes_sha256": recipe_hashes(root, os.environ.get("PROFILE")),
        "stages": stages,
        "total_wall_s": round(sum(spans.values()), 1),
    }
    with atomic_open(path) as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return doc
