#!/usr/bin/env python3
"""Run pipeline stages (make targets) in order, in ONE Python process, and record each stage's wall
time in results/<model>/wall_times.json (read by `askdraft summarize`) and its resources (wall time,
GPU and CPU memory peaks, disk written: askdraft.stage_resources) in results/<model>/stages.json.

make stays the single source of what a stage runs and whether it is stale: for each stage the
runner asks `make -q` (up to date? skip, keeping its recorded time), then `make -n` (the command
lines), and runs each line itself. Lines that start the pipeline's Python (`$(PY) -m MODULE ...`
or `$(PY) SCRIPT ...`) run in this process, so torch/transformers/axolotl are imported once
instead of once per command (`import axolotl.train`: 11.5 s on 2 CPU cores, 16-29 s on the lent
H100 host); other lines (touch, rm, shell conditionals) go to bash. A failing line stops the run with the
stage's name; re-running resumes at the first stale stage, as make does. One runner a folder at a
time (a second one, e.g. the rerun after a `make` killed alone, waits for the first); SIGTERM stops
the stage that is running, with its children, and exits 143.

usage: tools/run_stages.py [STAGE ...] [--isolate] [--jobs N] [--makefile PATH]
  STAGE: make targets (default: the stage table's PIPELINE, tools/askdraft/pipeline.py)
  env: PROFILE, PY, MODEL_NAME and any other make variable to pass on (as for make)
  --isolate: run every line in its own process, exactly as `make STAGE` would
  --jobs N: the stale stages of a SIBLINGS group (independent of each other) run side by side, at
    most N at once: the first in this process, the others each in a child runner (output in
    runs/<PROFILE>/stage-<name>.log, its tail printed if it fails); a failure fails the run after
    the running siblings have finished, and no further sibling starts. Each sibling's record goes
    into stages.json as it ends (its own processes' peaks, marked side_by_side). 1 (default): one by one.
"""
import argparse
import gc
import json
import linecache
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path

from askdraft import gpu_cap
from askdraft.command import stop_process_group
from askdraft.io import atomic_open, exclusive
from askdraft.pipeline import PIPELINE, SIBLINGS
from askdraft.stage_resources import StageMonitor, record_stage

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"  # --makefile; its folder is the cwd
# what the Makefile exports to every recipe line
EXPORTS = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
SHELL_SYNTAX = set(";&|<>()")


def make(*args):
    # make variables reach make as they reach this runner: the environment (every variable a
    # stage reads is a `?=` default) and MAKEFLAGS from a calling `make pipeline VAR=...`
    return subprocess.run(["make", "-f", MAKEFILE, "--no-print-directory", *args],
                          cwd=MAKEFILE.parent, capture_output=True, text=True)


def is_up_to_date(stage):
    return make("-q", stage).returncode == 0


def planned_lines(stage):
    """The command lines `make STAGE` would run now, one string each (continuations joined)."""
    out = make("-n", stage)
    if out.returncode != 0:
        sys.exit(f"run_stages: `make -n {stage}` failed:\n{out.stderr}")
    return [line for line in out.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def python_argv(line, python):
    """argv after the interpreter if `line` is a plain `python -m MODULE ...` / `python SCRIPT ...`
    call of the pipeline's interpreter, else None (the line needs a shell)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != python:
        return None
    if any(set(w) <= SHELL_SYNTAX or "$" in w or "`" in w or "*" in w for w in words):
        return None
    if words[1] == "-m" and len(words) > 2:
        return words[1:]
    return words[1:] if words[1].endswith(".py") else None


def run_in_process(argv):
    """Run `python ARGV` here; a non-zero exit raises SystemExit with that code."""
    saved_argv = sys.argv[:]
    try:
        if argv[0] == "-m" and argv[1] == "axolotl.cli.main":
            from axolotl.cli.main import cli  # click: standalone_mode=False raises instead of exiting
            cli.main(args=argv[2:], prog_name="axolotl", standalone_mode=False)
        elif argv[0] == "-m" and argv[1] == "askdraft.cli":  # runpy would warn: already imported
            from askdraft.cli import main
            sys.exit(main(argv[2:]))
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv[:]
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = saved_argv
        undo_class_patches()
        release_memory()


def undo_class_patches():
    """Put back the attention forward that axolotl's LoRA kernels replace for the whole process.

    patch_self_attn_lora rewrites e.g. LlamaAttention.forward to call apply_qkv/apply_o, which only
    its patched training model has: a later stage's plain model would fail with "'LlamaAttention'
    object has no attribute 'apply_qkv'" (seen on the H200 at the drafts stage). Axolotl keeps the
    original's source in cls._original_forward; compile it back in the class's own module (under a
    linecache name, since the next patch reads its source), and drop the marker so the next training
    stage patches again.
    """
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("transformers.models."):
            continue
        for cls in list(vars(module).values()):
            if isinstance(cls, type) and "_original_forward" in cls.__dict__ and cls.__module__ == module.__name__:
                source, namespace = textwrap.dedent(cls._original_forward), {}
                filename = f"<original {module.__name__}.{cls.__name__}.forward>"
                linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
                exec(compile(source, filename, "exec"), vars(module), namespace)
                cls.forward = namespace["forward"]
                del cls._original_forward


def release_memory():
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def gpu_memory_left():
    """' (N GiB of GPU memory still allocated)' after a stage, to spot what one process keeps."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return ""
    return f" ({torch.cuda.memory_allocated() / 2**30:.2f} GiB of GPU memory still allocated)"


def cap_gpu_memory():
    """make's GPU_MEM_GIB (in the environment when the runner is started by hand) as the
    ASKDRAFT_GPU_MEM_GIB every stage process applies: here now, in child processes through
    tools/gpu_cap/sitecustomize.py on PYTHONPATH. A bad value raises gpu_cap.CapError."""
    if os.environ.get("GPU_MEM_GIB", "").strip():
        os.environ[gpu_cap.ENV] = os.environ["GPU_MEM_GIB"].strip()
    if gpu_cap.cap_gib() is not None:
        hook = str(Path(__file__).resolve().parent / "gpu_cap")
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if hook not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([hook] + [p for p in paths if p])
        gpu_cap.install()


def run_line(line, python, isolate):
    print(f"+ {line}", flush=True)
    argv = None if isolate else python_argv(line, python)
    if argv is None:
        code = run_shell(line)
        if code:
            raise SystemExit(code)
    else:
        run_in_process(argv)


def run_shell(line):
    """Exit code of `line` run by bash in a process group of its own; if this runner is stopped
    (SIGTERM, Ctrl-C), the whole group goes too, with whatever the line started in the background."""
    proc = subprocess.Popen(["bash", "-eu", "-o", "pipefail", "-c", line], cwd=MAKEFILE.parent, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        stop_process_group(proc, 10)
        raise


def record(times_path, stage, seconds):
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    times[stage] = round(seconds, 1)
    tmp = times_path.with_suffix(".tmp")
    times_path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(times, indent=2) + "\n")
    tmp.replace(times_path)


def run_stage(stage, python, isolate):
    """Run the stage's lines here; 0, or the failing line's exit code (after saying so)."""
    for line in planned_lines(stage):
        try:
            run_line(line, python, isolate)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) and e.code else 1
        except Exception:
            traceback.print_exc()
            code = 1
        else:
            continue
        print(f"run_stages: stage {stage} failed (exit {code}) at: {line}", file=sys.stderr, flush=True)
        return code
    return 0


def stage_log(stage):
    profile = os.environ.get("PROFILE")
    return MAKEFILE.parent / "runs" / (profile or "") / f"stage-{stage}.log"


class Recorder:
    """Each stage's resources (a StageMonitor) into results/<model>/stages.json, or, in a --jobs
    child (record_to), into the file its parent adds to stages.json when the child ends."""

    def __init__(self, stages_json, record_to=None):
        self.stages_json, self.record_to, self.lock = stages_json, record_to, threading.Lock()

    def measure(self, stage, run, exclude=None, group=None):
        """run() (an exit code) under a StageMonitor, then save its record; run()'s code."""
        with StageMonitor(MAKEFILE.parent, exclude=exclude) as monitor:
            code = run()
        self.save(stage, monitor.record, code, group)
        return code

    def save(self, stage, rec, code, group=None):
        rec = dict(rec, **({"side_by_side": list(group)} if group else {}))
        if self.record_to:
            with atomic_open(self.record_to) as f:
                json.dump({"record": rec, "code": code}, f)
            return
        with self.lock:  # a sibling's waiter thread and this process's stage may end together
            record_stage(self.stages_json, MAKEFILE.parent, stage, rec, code)


def run_siblings(stages, jobs, python, isolate, recorder=None):
    """Run stale sibling stages side by side, at most `jobs` at once: stages[0] in this process, the
    others each in a child runner that measures itself (recorder) and records no wall time.
    Returns {stage: (code, seconds)} for every stage that ran; waits for every child it started,
    also when this process's stage fails."""
    slots = threading.Semaphore(jobs)
    failed = threading.Event()
    results, lock = {}, threading.Lock()
    children = []  # (stage, Popen, log path, waiter thread)
    records = Path(tempfile.mkdtemp(prefix="askdraft-siblings-"))

    def wait_child(stage, proc, start):
        code = proc.wait()
        seconds = time.time() - start
        with lock:
            results[stage] = (code, seconds)
        if recorder is not None:  # the child's own record, with the wall time its parent saw
            path = records / f"{stage}.json"
            rec = json.loads(path.read_text())["record"] if path.exists() else {}
            recorder.save(stage, dict(rec, wall_s=round(seconds, 1)), code, stages)
        if code:
            failed.set()
        slots.release()

    def launch():
        for stage in stages[1:]:
            slots.acquire()
            if failed.is_set():
                slots.release()
                break
            log = stage_log(stage)
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--makefile", str(MAKEFILE), stage]
            cmd += ["--record-to", str(records / f"{stage}.json")] if recorder is not None else ["--no-record"]
            if isolate:
                cmd.append("--isolate")
            print(f"== {stage}: started side by side, output in {log}", flush=True)
            start = time.time()
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, cwd=MAKEFILE.parent, stdout=out, stderr=subprocess.STDOUT)
            waiter = threading.Thread(target=wait_child, args=(stage, proc, start))
            waiter.start()
            children.append((stage, proc, log, waiter))

    slots.acquire()  # this process's stage holds one slot
    launcher = threading.Thread(target=launch)
    launcher.start()
    try:
        print(f"== {stages[0]}", flush=True)
        start = time.time()
        first = lambda: run_stage(stages[0], python, isolate)  # noqa: E731
        if recorder is None:
            code = first()
        else:  # this process's own peaks: the child runners' process trees left out
            code = recorder.measure(stages[0], first, exclude=lambda: [c[1].pid for c in list(children)], group=stages)
        results[stages[0]] = (code, time.time() - start)
        if code:
            failed.set()
        slots.release()
    finally:
        interrupted = stages[0] not in results or results[stages[0]][0] == 128 + signal.SIGTERM
        if stages[0] not in results:  # interrupted: stop the children rather than leave orphans
            failed.set()
            slots.release()
        launcher.join()
        for stage, proc, log, waiter in children:
            if interrupted:
                proc.terminate()
            waiter.join()
        shutil.rmtree(records, ignore_errors=True)
    for stage, proc, log, waiter in children:
        code, seconds = results[stage]
        if code:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"-- last lines of {log}:\n" + "\n".join(tail), file=sys.stderr, flush=True)
            print(f"run_stages: stage {stage} failed (exit {code}); its output: {log}", file=sys.stderr, flush=True)
    return results


def main(argv=None):
    global MAKEFILE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="*", default=list(PIPELINE))
    p.add_argument("--isolate", action="store_true", help="a process per command line, as make does")
    p.add_argument("--jobs", type=int, default=1, help="this many stages of a SIBLINGS group at once")
    p.add_argument("--no-record", action="store_true", help=argparse.SUPPRESS)  # a --jobs child
    p.add_argument("--record-to", type=Path, help=argparse.SUPPRESS)  # a --jobs child: its record's file
    p.add_argument("--makefile", type=Path, default=MAKEFILE, help="default: the repo's; its folder is the cwd")
    args = p.parse_args(argv)
    MAKEFILE = args.makefile.resolve()
    # SIGTERM unwinds through Python: side-by-side children are stopped, temporary files removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.chdir(MAKEFILE.parent)
    os.environ.update(EXPORTS)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # the Makefile's `?=`
    python = os.environ.get("PY") or sys.executable  # the make lines start with $(PY) verbatim
    results_dir = MAKEFILE.parent / "results" / os.environ.get("MODEL_NAME", "SmolLM2-135M-Instruct")
    times_path = None if args.no_record or args.record_to else results_dir / "wall_times.json"
    try:
        cap_gpu_memory()
    except gpu_cap.CapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    recorder = None
    if not args.no_record:
        gpu_cap.RECORD_PEAKS_AT_EXIT = False  # StageMonitor reads this process's peak itself
        recorder = Recorder(results_dir / "stages.json", args.record_to)
    if times_path is None:  # a --jobs child: its parent holds the lock
        return run_all(args, python, times_path, recorder)
    # one runner a pipeline (a folder's MODEL_NAME; k-fold candidates have their own): the rerun of a
    # pipeline whose killed `make` left this runner going waits for it
    results_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(results_dir, "pipeline stages (tools/run_stages.py)"):
        return run_all(args, python, times_path, recorder)


def run_all(args, python, times_path, recorder):
    """Each stale stage of args.stages in order (siblings side by side with --jobs); the exit code.
    Wall times go to times_path (None: a --jobs child's, which its parent records)."""
    done = set()
    for stage in args.stages:
        if stage in done:
            continue
        if is_up_to_date(stage):
            print(f"== {stage}: up to date", flush=True)
            continue
        group = next((g for g in SIBLINGS if stage in g), ()) if args.jobs > 1 else ()
        stale = [s for s in args.stages if s in group and s not in done and (s == stage or not is_up_to_date(s))]
        if len(stale) > 1:
            results = run_siblings(stale, args.jobs, python, args.isolate, recorder)
            done.update(stale)
            for name in stale:  # in the command line's order
                if name in results and results[name][0] == 0:
                    if times_path is not None:
                        record(times_path, name, results[name][1])
                    print(f"== {name}: {results[name][1]:.1f} s", flush=True)
            codes = [results[name][0] for name in stale if name in results and results[name][0]]
            if codes or len(results) < len(stale):
                return codes[0] if codes else 1
            print(f"== side by side: {', '.join(stale)}{gpu_memory_left()}", flush=True)
            continue
        print(f"== {stage}", flush=True)
        start = time.time()
        run = lambda: run_stage(stage, python, args.isolate)  # noqa: E731
        code = run() if recorder is None else recorder.measure(stage, run)
        if code:
            return code
        if times_path is not None:
            record(times_path, stage, time.time() - start)
        print(f"== {stage}: {time.time() - start:.1f} s{gpu_memory_left()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
