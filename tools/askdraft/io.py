"""JSONL reading with errors that name file and line, and atomic writes.

The line reader and InputError live in the phase C plugin (askdraft_dpo.rows, which validates
its pairs files with them and needs nothing from these tools); they are re-exported here."""
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from askdraft_dpo.rows import BOM, InputError, check_text, json_lines, json_type, text_lines  # noqa: F401


def read_jsonl(path, required=(), optional=(), allow_extra=False):
    """Rows of a JSONL file as dicts. Checks JSON syntax, required fields (non-empty strings
    without control characters, unless they are not strings) and, unless allow_extra, that no
    unknown field is present."""
    path = Path(path)
    rows = []
    allowed = set(required) | set(optional)
    for n, row in json_lines(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise InputError(path, n, f"missing field(s) {missing}")
        empty = [k for k in required if isinstance(row[k], str) and not row[k].strip()]
        if empty:
            raise InputError(path, n, f"empty field(s) {empty}")
        for k in required:
            if isinstance(row[k], str):
                check_text(row[k], path, n, k)
        extra = sorted(set(row) - allowed)
        if extra and not allow_extra:
            raise InputError(path, n, f"unexpected field(s) {extra}; allowed: {sorted(allowed)}")
        row["_line"] = n
        rows.append(row)
    return rows


def positive_int(text):
    """argparse type: a whole number >= 1 (--limit -5 would silently mean "all but five")."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def strip_line(row):
    return {k: v for k, v in row.items() if k != "_line"}


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # a killed writer's
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(row):
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


def write_jsonl(path, rows):
    with atomic_open(path) as f:
        for row in rows:
            f.write(dumps(strip_line(row)) + "\n")


def write_json(path, obj):
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive(folder, what):
    """Hold an exclusive lock on `folder` (created if missing, removed again if left empty) while
    writing into it.

    A second writer of the same folder (e.g. the rerun of a stage whose killed parent left this
    one running) waits here, saying so, instead of racing it over the same files. The lock is
    the kernel's (flock on the folder itself): no lock file, and it goes with the process, even
    on SIGKILL."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{folder}: another process is writing {what} here (an earlier run still going?); "
                  "waiting for it to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
        if created:  # nothing written (e.g. bad input): leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
