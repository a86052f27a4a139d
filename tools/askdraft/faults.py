"""Kill a stage at a random point, rerun it, and check what the rerun left.

A check runs the stage's command three times: once uninterrupted (the reference bytes and the
fresh run's wall time), once killed (SIGTERM or SIGKILL, to the whole process group as a
preempted host or `kill -- -PGID` would, or to the leader only, which leaves its children running
as orphans, as killing `make` does), and once more to completion. It then compares:
the rerun's exit code, its output files against the reference (sha256 of every file under the
output paths), temporary files left behind (*.partial, *.tmp, ...) and the rerun's wall time
against the fresh run's.

    python -m askdraft.faults --output data/drafts/cot_phaseB --signal KILL -- make drafts

kills `make drafts` once at a random moment of a fresh run's duration (the output paths are
deleted before the fresh run and before the killed one), reruns it and prints the check as JSON;
exit 1 when the rerun failed, left temporary files or (with --deterministic) wrote other bytes.
"""
import argparse
import fnmatch
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TEMP_PATTERNS = ("*.partial", "*.tmp", "*.temp", "*.lock", "*.incomplete", "tmp*")
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


def files_under(paths):
    """Every file under `paths` (files or folders), as Path objects, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(f for f in p.rglob("*") if f.is_file())
    return sorted(out)


def leftovers(paths):
    """Temporary files under `paths`: what a finished stage must not leave behind."""
    return [str(f) for f in files_under(paths) if any(fnmatch.fnmatch(f.name, pat) for pat in TEMP_PATTERNS)]


def digests(paths, ignore=()):
    """{file: sha256} of every file under `paths`, except names matching `ignore` patterns."""
    out = {}
    for f in files_under(paths):
        if not any(fnmatch.fnmatch(f.name, pat) for pat in ignore):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def remove(paths):
    for p in map(Path, paths):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run(cmd, cwd=None, env=None, timeout=None):
    """(exit code, seconds, output) of `cmd` run to completion in its own process group."""
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)
    return proc.returncode, time.time() - start, proc.stdout + proc.stderr


def run_killed(cmd, sig, when, cwd=None, env=None, group=True, timeout=None, log=None):
    """Start `cmd`, send `sig` once `when` holds, wait for the process to end.

    when: seconds after the start, or a callable polled every 50 ms (e.g. "a .partial file has a
    row"). group: signal the whole process group (else the leader only: its children live on).
    log: a file for the command's output (for `when` to watch), else it is dropped.
    Returns the seconds at the kill, or None when the command ended before `when` held."""
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.time()
    due = (lambda: time.time() - start >= when) if isinstance(when, (int, float)) else when
    try:
        while proc.poll() is None and not due():
            if timeout and time.time() - start > timeout:
                raise TimeoutError(f"{cmd}: `when` did not hold within {timeout} s")
            time.sleep(0.05)
        if proc.poll() is not None:
            return None
        killed_at = time.time() - start
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(timeout=timeout)
        return killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


def wait_orphans(pgid, timeout=600):
    """Wait until no process of group `pgid` is left (orphans of a leader-only kill)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise TimeoutError(f"processes of group {pgid} still running after {timeout} s")


def check(cmd, outputs, sig=signal.SIGKILL, when=None, seed=0, cwd=None, env=None, group=True,
          deterministic=True, ignore=(), timeout=None, fresh=None, log=None):
    """Fresh run, killed run, rerun of `cmd`; `outputs` are deleted before the fresh and the killed run.

    when: as run_killed, or None for a random point between 10% and 90% of the fresh run's time.
    fresh: (exit code, seconds, output) of an uninterrupted run already made, with `outputs` as it
    left them (several checks of one stage share it). log: the killed run's output file. Returns a dict: the exit codes, the seconds of
    each run, the rerun's ratio to the fresh run, identical (None unless deterministic),
    the files that differ, and leftovers."""
    outputs = [Path(cwd or ".", p) for p in outputs]
    if fresh is None:
        remove(outputs)
        fresh = run(cmd, cwd, env, timeout)
    code, fresh_s, fresh_out = fresh
    if code != 0:
        raise RuntimeError(f"{cmd}: the uninterrupted run failed (exit {code}):\n{fresh_out[-3000:]}")
    reference = digests(outputs, ignore)
    remove(outputs)
    random_point = when is None
    if random_point:
        when = fresh_s * random.Random(seed).uniform(0.1, 0.9)
    killed_at = run_killed(cmd, sig, when, cwd, env, group, timeout, log)
    for _ in range(3):  # it finished before the random point (a faster run than the fresh one): earlier
        if killed_at is not None or not random_point:
            break
        remove(outputs)
        when /= 2
        killed_at = run_killed(cmd, sig, when, cwd, env, group, timeout, log)
    rerun_code, rerun_s, rerun_out = run(cmd, cwd, env, timeout)
    after = digests(outputs, ignore)
    differ = sorted(f for f in set(reference) | set(after) if reference.get(f) != after.get(f))
    return {"cmd": " ".join(map(str, cmd)), "signal": signal.Signals(sig).name, "group": group,
            "killed_at_s": killed_at and round(killed_at, 2), "fresh_s": round(fresh_s, 2),
            "rerun_code": rerun_code, "rerun_s": round(rerun_s, 2), "rerun_ratio": round(rerun_s / fresh_s, 2),
            "identical": (not differ) if deterministic else None, "differ": differ if deterministic else [],
            "leftovers": leftovers(outputs), "rerun_tail": "" if rerun_code == 0 else rerun_out[-3000:]}


def failures(result):
    """What a check's result gets wrong (empty: it passed). Timings are reported, not judged."""
    out = []
    if result["killed_at_s"] is None:
        out.append("the command finished before the kill")
    if result["rerun_code"] != 0:
        out.append(f"the rerun exited {result['rerun_code']}:\n{result['rerun_tail']}")
    if result["identical"] is False:
        out.append(f"outputs differ from the uninterrupted run: {result['differ']}")
    if result["leftovers"]:
        out.append(f"temporary files left: {result['leftovers']}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", action="append", required=True, help="a file or folder the command writes (repeatable)")
    p.add_argument("--signal", choices=sorted(SIGNALS), default="KILL")
    p.add_argument("--leader-only", action="store_true", help="signal the leader only (its children live on)")
    p.add_argument("--at", type=float, help="seconds after the start (default: random within the fresh run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="the outputs must be byte-identical")
    p.add_argument("--ignore", action="append", default=[], help="file name pattern left out of the comparison")
    p.add_argument("cmd", nargs="+")
    args = p.parse_args(argv)
    result = check(args.cmd, args.output, SIGNALS[args.signal], args.at, args.seed, group=not args.leader_only,
                   deterministic=args.deterministic, ignore=args.ignore)
    print(json.dumps(result, indent=2))
    for problem in failures(result):
        print(f"faults: {problem}", file=sys.stderr)
    return 1 if failures(result) else 0


if __name__ == "__main__":
    sys.exit(main())
