"""Running a parsed command, shared by `askdraft <command>` (cli.py) and the seed's scripts
(tools/build_dpo_pairs.py, tools/attention_tools.py): bad input prints its message (file and
line) and exits 2. Imports nothing of the stages, so no stage module imports cli.py back."""
import argparse
import os
import signal
import subprocess
import sys
import threading

from askdraft.io import InputError


def run(args):
    """Run a parsed command (its `func`); an InputError becomes a message on stderr and exit 2.
    ASKDRAFT_GPU_MEM_GIB caps the command's GPU memory (askdraft.gpu_cap) before it allocates.
    SIGTERM exits 143 through Python (not the default abrupt death), so that atomic writers remove
    their temporary files and open files are closed on the way out."""
    from askdraft import gpu_cap
    try:
        gpu_cap.install()
    except gpu_cap.CapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def standalone(add_arguments, prog, doc, argv=None):
    """A module's own script entry point (e.g. tools/build_dpo_pairs.py): its parser, then run()."""
    p = add_arguments(argparse.ArgumentParser(prog=prog, description=doc,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(p.parse_args(argv))


def stop_process_group(proc, grace):
    """SIGTERM the process group `proc` leads (started with start_new_session), SIGKILL it if it
    has not ended after `grace` seconds; waits for `proc`."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
