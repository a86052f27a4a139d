"""make GPU_MEM_GIB=N: every Python process of a stage caps its GPU memory as it imports torch
(askdraft.gpu_cap through tools/gpu_cap/sitecustomize.py), a bad value stops with a clear error,
and tools/run_stages.py records each stage's resources in results/<model>/stages.json.
The GPU tests (skipped without CUDA) prove that a stage over the cap fails the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "tools" / "gpu_cap"
# prints whether this process has the cap installed and queued (to apply as CUDA initializes), and its GiB
PROBE = """\
import json, os, sys
import torch
import askdraft.gpu_cap as cap
queued = any(getattr(c[0], "__module__", "") == "askdraft.gpu_cap" for c in torch.cuda._queued_calls)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "installed": cap._installed, "queued": queued,
                        "gib": cap.cap_gib()}) + "\\n")
"""
# allocates GiB on the GPU and holds it a moment (sampled by the stage monitor)
ALLOC = """\
import sys, time
import torch
x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device="cuda")
time.sleep(1)
"""
STAGES = """\
PY ?= python3
inproc:
\t$(PY) probe.py out.jsonl
child:
\t$(PY) probe.py out.jsonl > /dev/null && echo child done
alloc:
\t$(PY) alloc.py $(GIB)
alloc-child:
\t$(PY) alloc.py $(GIB) > /dev/null
"""
RESOURCES = """\
PY ?= python3
work: out/big.bin
out/big.bin:
\tmkdir -p out
\t$(PY) hold.py 200 out/big.bin
\t$(PY) hold.py 300 out/small.bin > /dev/null
"""
# holds MB of memory for a second, writes a 3 MB file
HOLD = """\
import sys, time
block = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.0)
open(sys.argv[2], "wb").write(b"x" * 3 * 2**20)
"""


def env(**extra):
    e = {**os.environ, "PY": sys.executable, "MODEL_NAME": "m", "PROFILE": "p",
         "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    for k in ("GPU_MEM_GIB", "ASKDRAFT_GPU_MEM_GIB", "ASKDRAFT_TORCH_PEAKS"):
        e.pop(k, None)
    e.update(extra)
    return e


def run_stages(tmp_path, *stages, **extra):
    return subprocess.run([sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile",
                           str(tmp_path / "Makefile"), *stages], env=env(**extra), capture_output=True,
                          text=True, timeout=300)


def probes(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_cap_reaches_every_stage_process(tmp_path):
    (tmp_path / "Makefile").write_text(STAGES)
    (tmp_path / "probe.py").write_text(PROBE)
    # the runner started by hand with GPU_MEM_GIB: its own process (in-process line) and a child
    done = run_stages(tmp_path, "inproc", "child", GPU_MEM_GIB="7.5")
    assert done.returncode == 0, done.stdout + done.stderr
    inproc, child = probes(tmp_path)
    assert child["pid"] != inproc["pid"]
    for p in (inproc, child):
        assert p["installed"] and p["gib"] == 7.5
        assert p["queued"]  # to run as CUDA initializes (nothing here touched the GPU yet)
    # the project's Makefile: a recipe line's Python process, through the exported hook
    (tmp_path / "out.jsonl").unlink()
    made = subprocess.run(["make", "-f", str(REPO / "Makefile"), "--no-print-directory", "--eval",
                           f"probe-cap: ; $(PY) {tmp_path / 'probe.py'} {tmp_path / 'out.jsonl'}", "probe-cap",
                           f"PY={sys.executable}", "GPU_MEM_GIB=6"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    [p] = probes(tmp_path)
    assert p["installed"] and p["gib"] == 6.0
    # without the variable nothing is installed
    (tmp_path / "out.jsonl").unlink()
    assert run_stages(tmp_path, "inproc").returncode == 0
    assert probes(tmp_path)[0]["installed"] is False


@pytest.mark.parametrize("value", ["abc", "0", "-2", "nan"])
def test_bad_cap_is_a_clear_error(tmp_path, value):
    (tmp_path / "Makefile").write_text(STAGES)
    (tmp_path / "probe.py").write_text(PROBE)
    runner = run_stages(tmp_path, "inproc", GPU_MEM_GIB=value)
    assert runner.returncode == 2 and f"ASKDRAFT_GPU_MEM_GIB={value!r} (make GPU_MEM_GIB)" in runner.stderr
    assert not (tmp_path / "out.jsonl").exists()
    made = subprocess.run(["make", "-f", str(REPO / "Makefile"), "--no-print-directory", "--eval",
                           f"probe-cap: ; $(PY) {tmp_path / 'probe.py'} {tmp_path / 'out.jsonl'}", "probe-cap",
                           f"PY={sys.executable}", f"GPU_MEM_GIB={value}"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode != 0 and "(make GPU_MEM_GIB)" in made.stderr
    assert not (tmp_path / "out.jsonl").exists()
    cli = subprocess.run([sys.executable, "-m", "askdraft.cli", "recipe", str(REPO / "recipes/phase_a.yaml"),
                          "-o", str(tmp_path / "r.yaml")], env=env(ASKDRAFT_GPU_MEM_GIB=value),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "ASKDRAFT_GPU_MEM_GIB" in cli.stderr and not (tmp_path / "r.yaml").exists()


def test_stage_resources_recorded(tmp_path):
    (tmp_path / "Makefile").write_text(RESOURCES)
    (tmp_path / "hold.py").write_text(HOLD)
    done = run_stages(tmp_path, "work")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((tmp_path / "results/m/stages.json").read_text())
    rec = doc["stages"]["work"]
    assert rec["wall_s"] >= 2.0
    assert rec["cpu_rss_peak_gib"] >= 300 / 1024  # the bash line's child held 300 MB
    assert 6 / 1024 <= rec["disk_written_gib"] < 0.05  # two 3 MB files (and the result files beside)
    if not __import__("torch").cuda.is_available():
        assert rec["gpu_process_peak_gib"] is None and rec["gpu_device_used_peak_gib"] is None
        assert rec["torch_peak_reserved_gib"] is None and doc["device"].startswith("cpu")
    assert doc["profile"] == "p" and doc["commit"] and doc["total_wall_s"] == rec["wall_s"]
    assert doc["gpu_mem_cap_gib"] is None
    wall = json.loads((tmp_path / "results/m/wall_times.json").read_text())
    assert abs(wall["work"] - rec["wall_s"]) < 1.0
    assert not list(tmp_path.glob("results/m/.*.tmp"))


gpu = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("stage", ["alloc", "alloc-child"])
def test_stage_over_the_cap_fails(tmp_path, stage):
    """1.5 GiB under a 1 GiB cap: torch.OutOfMemoryError fails the stage (in the runner's process
    and in a child); under a 2 GiB cap the same stage passes and its peaks are recorded."""
    (tmp_path / "Makefile").write_text(STAGES)
    (tmp_path / "alloc.py").write_text(ALLOC)
    alloc = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "GIB": "1.5"}  # as the Makefile sets it
    over = run_stages(tmp_path, stage, GPU_MEM_GIB="1", **alloc)
    assert over.returncode != 0, over.stdout + over.stderr
    assert "OutOfMemoryError" in over.stdout + over.stderr and f"stage {stage} failed" in over.stderr
    assert json.loads((tmp_path / "results/m/stages.json").read_text())["stages"][stage]["failed_exit"]
    under = run_stages(tmp_path, stage, GPU_MEM_GIB="2", **alloc)
    assert under.returncode == 0, under.stdout + under.stderr
    rec = json.loads((tmp_path / "results/m/stages.json").read_text())["stages"][stage]
    assert "failed_exit" not in rec and 1.5 <= rec["torch_peak_reserved_gib"] <= 2.0
    assert rec["gpu_device_used_peak_gib"] >= 1.5
    if rec["gpu_process_peak_gib"] is not None:  # null where NVML's PIDs are the host's (a container)
        assert rec["gpu_process_peak_gib"] >= 1.5


@gpu
def test_make_stage_over_the_cap_fails(tmp_path):
    """The same through the project's Makefile, as `make STAGE GPU_MEM_GIB=N` runs a stage."""
    (tmp_path / "alloc.py").write_text(ALLOC)

    def make(gib):
        return subprocess.run(["make", "-f", str(REPO / "Makefile"), "--no-print-directory", "--eval",
                               f"alloc-cap: ; $(PY) {tmp_path / 'alloc.py'} 1.5", "alloc-cap", f"PY={sys.executable}",
                               f"GPU_MEM_GIB={gib}"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    over = make(1)
    assert over.returncode != 0 and "OutOfMemoryError" in over.stderr, over.stderr
    assert make(2).returncode == 0


def test_side_by_side_stages_each_get_their_own_record(tmp_path):
    """--jobs: each stage run side by side gets its own record as it ends (marked side_by_side): its
    own processes' memory peak, its own wall time; total_wall_s counts the group once."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_run_stages import SIBLING_STAGES, SIBLINGS_MAKEFILE

    # judge (a child runner) holds 600 MB beside its stamp; eval runs in the runner's own process
    (tmp_path / "Makefile").write_text(SIBLINGS_MAKEFILE.replace(
        "out/judge.txt: out/drafts.txt\n", "out/judge.txt: out/drafts.txt\n\t$(PY) hold.py 600 out/held.bin\n"))
    (tmp_path / "hold.py").write_text(HOLD)
    done = run_stages(tmp_path, "--jobs", "3", *SIBLING_STAGES)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((tmp_path / "results/m/stages.json").read_text())
    stages = doc["stages"]
    assert set(stages) == set(SIBLING_STAGES)
    group = ["eval", "attribution", "judge"]
    for name in group:
        assert stages[name]["side_by_side"] == group and stages[name]["wall_s"] >= 1.5
        assert "failed_exit" not in stages[name]
    assert stages["judge"]["wall_s"] >= stages["eval"]["wall_s"] + 0.8  # the hold's second, its own
    assert stages["judge"]["cpu_rss_peak_gib"] >= 600 / 1024
    for name in ("eval", "attribution"):  # neither counts the judge's 600 MB
        assert stages[name]["cpu_rss_peak_gib"] < stages["judge"]["cpu_rss_peak_gib"] - 400 / 1024, stages
    assert "side_by_side" not in stages["report"]
    longest = max(stages[name]["wall_s"] for name in group)
    others = sum(stages[name]["wall_s"] for name in ("drafts-c", "report"))
    assert doc["total_wall_s"] == pytest.approx(longest + others, abs=0.11)
    assert not list((tmp_path / "results/m").glob("*.tmp"))
