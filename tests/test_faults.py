"""Kill a stage, rerun it: exit 0, the uninterrupted run's bytes, no temporary files (askdraft.faults).

The slow tests kill each CPU stage's real command (a subprocess, its whole process group) at a
random point (SIGTERM and SIGKILL under `make fault-test`, one of them a stage in the suite) and
rerun it; the rerun's time against a fresh run's is printed (-s), not asserted."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from askdraft import drafts, faults, io
from conftest import strategyqa_split

REPO = Path(__file__).resolve().parents[1]


def signals(i):
    """Both signals under `make fault-test` (ASKDRAFT_FAULTS=all); else, to keep the suite short,
    one per stage, SIGTERM and SIGKILL taking turns."""
    both = (signal.SIGTERM, signal.SIGKILL)
    return both if os.environ.get("ASKDRAFT_FAULTS") == "all" else (both[i % 2],)
ASKDRAFT = [sys.executable, "-m", "askdraft.cli"]
RUN_DEPENDENT = (drafts.SPEED_FILE,)  # drafts' generation speed: this run's seconds, unlike the outputs


def env():
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins"),
                                                     os.environ.get("PYTHONPATH", "")]),
             OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return e


def drafts_cmd(model, data, out_root, *more):
    return [*ASKDRAFT, "drafts", "--base", str(model), "--name", "m", "--out-root", str(out_root), "--splits", "dev",
            "--data", str(data), "--batch-size", "4", "--limit", "16", "--max-new-tokens", "12", "--device", "cpu", *more]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    for f in strategyqa_split().iterdir():
        if f.is_file():
            shutil.copy(f, out)
    return out


def partial_has_rows(path, n=1):
    return lambda: path.is_file() and path.read_bytes().count(b"\n") >= n


# ---------------------------------------------------------------- the harness itself

def test_leftovers_and_digests(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text("1\n")
    (tmp_path / "a" / "x.jsonl.partial").write_text("")
    (tmp_path / "a" / ".x.jsonl.abc.tmp").write_text("")
    assert sorted(Path(p).name for p in faults.leftovers([tmp_path])) == [".x.jsonl.abc.tmp", "x.jsonl.partial"]
    before = faults.digests([tmp_path], ignore=["*.partial", "*.tmp"])
    (tmp_path / "a" / "x.jsonl").write_text("2\n")
    assert list(before) == [str(tmp_path / "a" / "x.jsonl")] and before != faults.digests([tmp_path])


def test_atomic_open_removes_a_killed_writers_temp_file(tmp_path):
    stale = tmp_path / ".out.json.k1ll3d.tmp"
    stale.write_text("half")
    other = tmp_path / ".other.json.k1ll3d.tmp"  # another target's: not ours to remove
    other.write_text("half")
    io.write_json(tmp_path / "out.json", {"a": 1})
    assert not stale.exists() and other.exists()
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


def test_sigterm_removes_the_temp_file_of_a_write_in_progress(tmp_path):
    """SIGTERM mid-write: the command exits 143 through Python, and atomic_open's temp file goes."""
    script = ("import argparse, time\nfrom askdraft.command import run\nfrom askdraft.io import atomic_open\n"
              "def slow(args):\n    with atomic_open(args.out) as f:\n        f.write('x')\n        f.flush()\n"
              "        time.sleep(60)\n"
              "p = argparse.ArgumentParser(); p.add_argument('--out'); p.set_defaults(func=slow)\n"
              "raise SystemExit(run(p.parse_args()))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "--out", str(tmp_path / "o.json")], env=env())
    deadline = time.time() + 60
    while not list(tmp_path.glob(".o.json.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- drafts: one writer at a time

def test_drafts_second_writer_waits_for_the_first(tiny_llama_dir, split_dir, tmp_path):
    """The 14x slow, exit-1 rerun: a killed parent (make, a shell) leaves the drafting process alive,
    and the rerun drafted the same questions beside it (both processes' threads on the same cores),
    then found the .partial already removed by the first. Now the rerun waits on the folder's lock,
    drafts nothing while the first holds it, and skips what the first finished."""
    out = tmp_path / "drafts" / "m"
    cmd = drafts_cmd(tiny_llama_dir, split_dir, tmp_path / "drafts")
    with io.exclusive(out, "drafts"):  # stands for the first writer
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # time to import and load and draft, if it did not wait
        assert proc.poll() is None and list(out.iterdir()) == []  # no .partial: it drafts nothing yet
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "another process is writing drafts here" in stderr
    assert len((out / "dev.jsonl").read_text().splitlines()) == 16
    assert faults.leftovers([out]) == []


def test_drafts_rerun_beside_an_orphan_of_a_killed_parent(tiny_llama_dir, split_dir, tmp_path):
    """A real kill: SIGKILL to a shell that runs `askdraft drafts` (its child lives on), then the rerun."""
    part = tmp_path / "drafts" / "m" / "dev.jsonl.partial"
    cmd = ["bash", "-c", " ".join(drafts_cmd(tiny_llama_dir, split_dir, tmp_path / "drafts")) + "; exit $?"]
    result = faults.check(cmd, [tmp_path / "drafts"], signal.SIGKILL, when=partial_has_rows(part, 4),
                          env=env(), group=False, ignore=RUN_DEPENDENT, timeout=600)
    print(json.dumps(result))
    assert result["killed_at_s"] is not None
    assert faults.failures(result) == []


# ---------------------------------------------------------------- every CPU stage, killed

def crafted_drafts(split_dir, file, n, out):
    """Drafts of the first n questions of a split file, shaped as `askdraft drafts` writes them."""
    from askdraft.drafts import draft_row
    rows = [json.loads(x) for x in (split_dir / file).read_text().splitlines()[:n]]
    out.write_text("".join(json.dumps(draft_row(r["question"], f"Is it so? Maybe.\nTentative answer: "
                                                f"{'yes' if i % 3 else 'no'}", r["teacher_final"])) + "\n"
                           for i, r in enumerate(rows)))
    return out


def evaluate_cmd(model, split, results):
    return [*ASKDRAFT, "evaluate", "--model-name", "m", "--stage", "B", "--base", str(model), "--dev",
            str(split / "strategyqa_dev.jsonl"), "--drafts", str(split / "dev_drafts.jsonl"), "--limit", "8",
            "--tasks", "strategyqa,strategyqa_draft", "--batch-size", "8", "--results", str(results)]


def stage_commands(tmp, model, split, judge_url=None):
    """{stage: (command, outputs, kill trigger or None for a random point, file names left out of the
    byte comparison)}; commands run in the repo, outputs in `tmp`."""
    drafts_dir = tmp / "drafts"
    return {
        "data": ([*ASKDRAFT, "data", "--no-hub", "--out", str(tmp / "data")], [tmp / "data"], None, ()),
        "sft-data": ([*ASKDRAFT, "sft-data", "--data", str(split), "--out", str(tmp / "sft"), "--base", str(model),
                      "--limit", "64"], [tmp / "sft"], None, ()),
        "drafts-generate": (drafts_cmd(model, split, drafts_dir / "g"), [drafts_dir / "g"],
                            partial_has_rows(drafts_dir / "g" / "m" / "dev.jsonl.partial"), RUN_DEPENDENT),
        "drafts-continuous": (drafts_cmd(model, split, drafts_dir / "c", "--engine", "continuous", "--cache-tokens", "512"),
                              [drafts_dir / "c"], partial_has_rows(drafts_dir / "c" / "m" / "dev.jsonl.partial"),
                              RUN_DEPENDENT),
        "pairs": ([*ASKDRAFT, "pairs", "--mode", "answer", "--drafts", str(split / "train_drafts.jsonl"),
                   "--gold", str(split / "strategyqa_train_cot.jsonl"), "--tokenizer", str(model), "--allow-empty",
                   "-o", str(tmp / "pairs.jsonl")], [tmp / "pairs.jsonl"], None, ()),
        # the .json beside each task's rows holds the run's times and start
        "eval": (evaluate_cmd(model, split, tmp / "results"), [tmp / "results"], None, ("*.json",)),
        "attribution": ([sys.executable, "tools/attention_tools.py", "--base", str(model), "--drafts",
                         str(split / "dev_drafts.jsonl"), "--limit", "3", "--n-steps", "4", "--out",
                         str(tmp / "attr" / "after.json"), "--heatmaps", str(tmp / "attr" / "heatmaps")],
                        [tmp / "attr"], None, ("*.json",)),
        "judge": ([*ASKDRAFT, "judge", "--drafts-a", str(tmp / "judge_in" / "dpo" / "dev.jsonl"), "--drafts-b",
                   str(tmp / "judge_in" / "phaseb" / "dev.jsonl"), "--base-url", str(judge_url), "--model", "scripted",
                   "--cache-dir", str(tmp / "judge" / "cache"), "--out", str(tmp / "judge" / "judge.json"),
                   "--concurrency", "2"], [tmp / "judge"], None,
                  # compared: the cached verdicts; judge.json and its calls log hold times and what came from the cache
                  ("judge.json", "judge.calls.jsonl")),
        "report": (["bash", "-c", f"{' '.join(ASKDRAFT)} summarize --model-name m --results {tmp / 'results'} && "
                    f"{' '.join(ASKDRAFT)} report --model-name m --results {tmp / 'results'}"],
                   [tmp / "results" / "m" / name for name in ("summary.json", "report.md")], None,
                   ("summary.json", "report.md")),  # they carry the date the summary was made: compared below
    }


STAGES = ["data", "sft-data", "drafts-generate", "drafts-continuous", "pairs", "eval", "attribution", "judge", "report"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stage_survives_a_kill(stage, tiny_llama_dir, split_dir, tmp_path):
    crafted_drafts(split_dir, "strategyqa_train_cot.jsonl", 40, split_dir / "train_drafts.jsonl")
    crafted_drafts(split_dir, "strategyqa_dev.jsonl", 8, split_dir / "dev_drafts.jsonl")
    judge_server = None
    if stage == "judge":  # test_judge's scripted OpenAI-compatible server: model a's draft wins, slowly
        from test_judge import ScriptedJudge, make_drafts
        make_drafts(tmp_path / "judge_in", [f"Can Q{i} be answered by asking?" for i in range(6)])
        judge_server = ScriptedJudge({f"Q{i}": "hang" if i % 2 else "m1" for i in range(6)})
        threading.Thread(target=judge_server.serve_forever, daemon=True).start()
    if stage == "report":  # what it summarizes: an uninterrupted eval
        code, _, out = faults.run(evaluate_cmd(tiny_llama_dir, split_dir, tmp_path / "results"), REPO, env(), 600)
        assert code == 0, out[-3000:]
    cmd, outputs, when, ignore = stage_commands(tmp_path, tiny_llama_dir, split_dir,
                                                judge_server and judge_server.url)[stage]
    try:
        faults.remove(outputs)
        fresh = faults.run(cmd, REPO, env(), 600)
        snapshot = {p: p.read_bytes() for p in faults.files_under(outputs)}
        for seed, sig in enumerate(signals(STAGES.index(stage))):
            for p, data in snapshot.items():  # the uninterrupted run's files: check() reads them as the reference
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            result = faults.check(cmd, outputs, sig, when, seed, cwd=REPO, env=env(), ignore=ignore, timeout=600,
                                  fresh=fresh)
            print(f"\n{stage} {result['signal']}: killed at {result['killed_at_s']} s, fresh {result['fresh_s']} s, "
                  f"rerun {result['rerun_s']} s ({result['rerun_ratio']}x)")
            assert faults.failures(result) == [], (stage, result["signal"])
            if stage == "report":
                undated = {p: [line for line in data.decode().splitlines() if "date" not in line and "written" not in line]
                           for p, data in snapshot.items()}
                assert undated == {p: [line for line in p.read_text().splitlines()
                                       if "date" not in line and "written" not in line] for p in snapshot}
    finally:
        if judge_server:
            judge_server.stop.set()
            judge_server.shutdown()
            judge_server.server_close()


# ---------------------------------------------------------------- a k-fold fold's training stage

def log_shows(log, text):
    return lambda: log.is_file() and text in log.read_text(errors="replace")


@pytest.mark.slow
def test_training_stage_of_a_fold_survives_a_kill_mid_epoch(tiny_llama_dir, tmp_path):
    """Phase A of a k-fold fold (its own folder and Makefile, run by run_stages as `askdraft kfold`
    does), killed after its 4th of 16 optimizer steps: the rerun trains again from the start in
    models/baseline_phaseA.partial/ and renames it into place, with the uninterrupted run's files
    and tensors; nothing of the killed run is left. Not byte-compared: two uninterrupted CPU runs
    of it already differ in the last bits of the weights."""
    from safetensors.torch import load_file
    from askdraft import kfold
    base = tmp_path / "bases" / "tiny"
    shutil.copytree(tiny_llama_dir, base)
    d = kfold.prepare_fold(tmp_path / "kfold", 0, 5, 0.1, 1234, base)
    fold_env = {**env(), "PROFILE": "smoke", "PY": sys.executable, "BASE_NAME": "tiny", "MODEL_NAME": "tiny-smoke"}
    stages = [sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile", str(d / "Makefile")]
    code, _, out = faults.run(stages + ["sft"], d, fold_env, 600)
    assert code == 0, out[-3000:]
    outputs = [d / "models" / "baseline_phaseA", d / "models" / "baseline_phaseA.partial"]
    log, adapter = tmp_path / "killed.log", d / "models" / "baseline_phaseA" / "adapter_model.safetensors"
    fresh = faults.run(stages + ["phase-a"], d, fold_env, 600)
    files = sorted(str(f.relative_to(d)) for f in faults.files_under(outputs))
    shapes = {k: tuple(v.shape) for k, v in load_file(adapter).items()}
    for sig in signals(1):
        result = faults.check(stages + ["phase-a"], outputs, sig, log_shows(log, "4/16 ["), cwd=d, env=fold_env,
                              timeout=600, log=log, deterministic=False, fresh=fresh)
        print(f"\nphase-a of a fold {result['signal']}: killed at {result['killed_at_s']} s, "
              f"fresh {result['fresh_s']} s, rerun {result['rerun_s']} s ({result['rerun_ratio']}x)")
        assert "Training completed" not in log.read_text(errors="replace")  # killed mid-epoch
        assert faults.failures(result) == [], result["signal"]
        assert sorted(str(f.relative_to(d)) for f in faults.files_under(outputs)) == files
        assert {k: tuple(v.shape) for k, v in load_file(adapter).items()} == shapes
        assert faults.run(["make", "-q", "-f", str(d / "Makefile"), "phase-a"], d, fold_env)[0] == 0  # done for make


def test_run_stages_sigterm_stops_its_stage_and_exits(tmp_path):
    """SIGTERM to the pipeline runner alone (not its group): the stage's child goes with it, no orphan."""
    (tmp_path / "Makefile").write_text("slow:\n\tsleep 120 & echo $$! > child.pid; wait\n")
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile",
                             str(tmp_path / "Makefile"), "--no-record", "slow"], env=env(), start_new_session=True)
    pid_file = tmp_path / "child.pid"
    deadline = time.time() + 60
    while not (pid_file.is_file() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    try:
        faults.wait_orphans(proc.pid, timeout=10)  # the bash line and its sleep: killed with the runner
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_second_pipeline_runner_of_a_folder_waits_for_the_first(tmp_path):
    """`make pipeline` killed alone leaves its runner going; the rerun's runner waits for it rather
    than running the same stages into the same files beside it."""
    (tmp_path / "Makefile").write_text("slow:\n\techo start >> log.txt; sleep 4; echo end >> log.txt\n")
    runner = [sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile", str(tmp_path / "Makefile"), "slow"]
    log = tmp_path / "log.txt"
    first = subprocess.Popen(runner, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not log.is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(runner, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert first.wait(timeout=60) == 0
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 0 and "another process is writing pipeline stages" in stderr
    assert log.read_text().split() == ["start", "end", "start", "end"]  # one after the other, never interleaved
