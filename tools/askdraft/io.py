"""JSONL reading with errors that name file and line, and atomic writes."""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Bad input: the message names the file and, where there is one, the line."""

    def __init__(self, path, line, msg):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {msg}")


def read_jsonl(path, required=(), optional=(), allow_extra=False):
    """Rows of a JSONL file as dicts. Checks JSON syntax, required fields (non-empty strings
    unless they are not strings) and, unless allow_extra, that no unknown field is present."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found")
    rows = []
    allowed = set(required) | set(optional)
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise InputError(path, n, f"malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(path, n, "expected a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise InputError(path, n, f"missing field(s) {missing}")
            empty = [k for k in required if isinstance(row[k], str) and not row[k].strip()]
            if empty:
                raise InputError(path, n, f"empty field(s) {empty}")
            extra = sorted(set(row) - allowed)
            if extra and not allow_extra:
                raise InputError(path, n, f"unexpected field(s) {extra}; allowed: {sorted(allowed)}")
            row["_line"] = n
            rows.append(row)
    return rows


def strip_line(row):
    return {k: v for k, v in row.items() if k != "_line"}


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
