"""tools/gpu_pipeline.sh against a stand-in checkout whose `make pipeline` takes a few seconds:
a second start while it runs does not start another run; wait returns the run's exit code;
collect archives results/<model>/; a start after the end resumes (make runs again)."""
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


def gpu_pipeline(checkout, work, *args):
    env = {"PATH": "/usr/bin:/bin", "WORK": str(work), "MODEL_NAME": "m"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=60)


def test_start_wait_collect(tmp_path):
    checkout, work = tmp_path / "checkout", tmp_path / "work"
    (checkout / "results" / "m").mkdir(parents=True)
    (checkout / "Makefile").write_text(MAKEFILE)
    (checkout / "results" / "m" / "committed.json").write_text("{}")  # never carried into the run

    assert "started" in gpu_pipeline(checkout, work, "start").stdout
    assert "already running" in gpu_pipeline(checkout, work, "start").stdout
    still = gpu_pipeline(checkout, work, "wait", "1")
    assert still.returncode == 3 and "still running" in still.stdout
    assert gpu_pipeline(checkout, work, "wait", "30").returncode == 0
    assert (work / "results/m/runs.txt").read_text() == "run\n"  # one run, not two
    assert not (work / "results/m/committed.json").exists()

    gpu_pipeline(checkout, work, "collect", str(tmp_path / "out"))
    with tarfile.open(tmp_path / "out" / "m.tgz") as tar:
        assert "m/runs.txt" in tar.getnames()
    assert (tmp_path / "out" / "pipeline.log").exists()

    assert "started" in gpu_pipeline(checkout, work, "start", "FAIL=1").stdout
    failed = gpu_pipeline(checkout, work, "wait", "30")
    assert failed.returncode != 0 and (work / "results/m/runs.txt").read_text() == "run\nrun\n"
