"""tools/gpu_pipeline.sh against a stand-in checkout whose `make pipeline` takes a few seconds:
a second start while it runs does not start another run; wait returns the run's exit code;
collect archives results/<model>/; a start after the end resumes (make runs again); a named run
(RUN=...) with C_VARIANT runs beside the default one into its own results folder; gguf joins
parts and checks the whole file's sha256."""
import hashlib
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "gpu_pipeline.sh"
MAKEFILE = """\
pipeline:
\tmkdir -p results/$(MODEL_NAME)
\techo run >> results/$(MODEL_NAME)/runs.txt
\tsleep 5
\ttest "$(FAIL)" != 1
"""


def gpu_pipeline(checkout, work, *args, **env):
    env = {"PATH": "/usr/bin:/bin", "WORK": str(work), "BASE_NAME": "m", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=60)


def test_start_wait_collect(tmp_path):
    checkout, work = tmp_path / "checkout", tmp_path / "work"
    (checkout / "results" / "m").mkdir(parents=True)
    (checkout / "Makefile").write_text(MAKEFILE)
    (checkout / "results" / "m" / "committed.json").write_text("{}")  # never carried into the run

    assert "started" in gpu_pipeline(checkout, work, "start").stdout
    assert "already running" in gpu_pipeline(checkout, work, "start").stdout
    variant = gpu_pipeline(checkout, work, "start", "C_VARIANT=v", RUN="v")
    assert "started v" in variant.stdout  # a named run starts beside the default one
    still = gpu_pipeline(checkout, work, "wait", "1")
    assert still.returncode == 3 and "still running" in still.stdout
    assert gpu_pipeline(checkout, work, "wait", "30").returncode == 0
    assert gpu_pipeline(checkout, work, "wait", "30", RUN="v").returncode == 0
    assert (work / "results/m/runs.txt").read_text() == "run\n"  # one run, not two
    assert (work / "results/m-v/runs.txt").read_text() == "run\n"
    assert not (work / "results/m/committed.json").exists()

    gpu_pipeline(checkout, work, "collect", str(tmp_path / "out"))
    with tarfile.open(tmp_path / "out" / "m.tgz") as tar:
        assert "m/runs.txt" in tar.getnames()
    assert (tmp_path / "out" / "pipeline.log").exists()
    gpu_pipeline(checkout, work, "collect", str(tmp_path / "out"), "C_VARIANT=v", RUN="v")
    assert (tmp_path / "out" / "m-v.tgz").exists() and (tmp_path / "out" / "v.log").exists()
    (work / "results" / "bench.json").write_text('{"schema": 2}')  # what make bench / speed-study leave
    (work / "runs").mkdir(exist_ok=True)
    (work / "runs" / "bench_plain.log").write_text("bench: A plain\n")
    gpu_pipeline(checkout, work, "collect", str(tmp_path / "bench"))
    assert (tmp_path / "bench" / "bench.json").read_text() == '{"schema": 2}'
    assert (tmp_path / "bench" / "bench_plain.log").exists() and not (tmp_path / "bench" / "bench.png").exists()

    assert "started" in gpu_pipeline(checkout, work, "start", "FAIL=1").stdout
    failed = gpu_pipeline(checkout, work, "wait", "30")
    assert failed.returncode != 0 and (work / "results/m/runs.txt").read_text() == "run\nrun\n"


def test_gguf_parts(tmp_path):
    blob = bytes(range(256)) * 1000
    p1, p2, cache = tmp_path / "p1", tmp_path / "p2", tmp_path / "cache"
    p1.mkdir(), p2.mkdir()
    (p1 / "gguf.part00").write_bytes(blob[:1000])
    (p2 / "gguf.part01").write_bytes(blob[1000:])
    (p2 / "gguf.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    gguf = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"

    wrong_order = gpu_pipeline(tmp_path, tmp_path / "w", "gguf", str(p2), ASKDRAFT_CACHE=str(cache))
    assert wrong_order.returncode == 1 and "does not match" in wrong_order.stderr and not gguf.exists()
    assert gpu_pipeline(tmp_path, tmp_path / "w", "gguf", str(p1), ASKDRAFT_CACHE=str(cache)).returncode == 0
    assert not gguf.exists()  # not whole yet
    assert "ready" in gpu_pipeline(tmp_path, tmp_path / "w", "gguf", str(p2), ASKDRAFT_CACHE=str(cache)).stdout
    assert gguf.read_bytes() == blob
