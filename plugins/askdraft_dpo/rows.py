"""Validated JSONL rows: the reader this plugin checks its pairs files with, and the one the
askdraft tools read every file kind with (they import it from here; this module imports nothing
outside the standard library).

Every error is an InputError naming the file and the line (or only the file). Lines are split on
"\\n" only (never str.splitlines, which also breaks on U+2028/U+2029/U+0085 that
json.dumps(ensure_ascii=False) writes raw); a leading UTF-8 BOM is accepted; bytes that are not
UTF-8 are an error naming the line. A text field holding a control character (NUL, ESC, DEL, the
C1 range, ...) is an error; tab, newline and carriage return are ordinary whitespace where a field
allows several lines, and single-line fields (a question) allow only tab.

A pairs file (phase C): `prompt`, `chosen`, `rejected` (or the recipe's field_prompt /
field_chosen / field_rejected) are required non-empty strings, chosen differs from rejected
(compared after stripping whitespace), and the same pair twice is an error (it would train twice).
"""
import gzip
import json
import re
from pathlib import Path

PAIR_FIELDS = ("prompt", "chosen", "rejected")
BOM = b"\xef\xbb\xbf"
# Unicode category Cc (C0, DEL, C1) but tab, newline, carriage return; one-line fields also refuse \n, \r
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
CONTROL_ONE_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class InputError(ValueError):
    """Bad input: the message names the file and, where there is one, the line."""

    def __init__(self, path, line, msg):
        self.path, self.line, self.msg = str(path), line, msg
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {msg}")


def text_lines(path):
    """[(line number, text)] of a UTF-8 text file, split on "\n" only.

    Not str.splitlines: that also breaks on U+2028, U+2029, U+0085 (and \x1c-\x1e), which
    json.dumps(ensure_ascii=False) writes raw inside strings. A leading UTF-8 BOM is skipped
    (as every common JSON reader does), a trailing "\r" dropped (CRLF files), and bytes that are
    not UTF-8 are an error naming the line and column. A .gz file is read decompressed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found")
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()  # committed results
    if data.startswith(BOM):
        data = data[len(BOM):]
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(path, n, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
        out.append((n, text.removesuffix("\r")))
    if out and out[-1][1] == "" and data.endswith(b"\n"):
        out.pop()  # the empty "line" after the final newline
    return out


def json_lines(path, torn_tail_ok=False):
    """[(line number, object)] of a JSONL file; blank lines are skipped. Every object must be a
    JSON object (dict). With torn_tail_ok, a malformed last line without its newline (a kill
    mid-write) is dropped instead of being an error."""
    path = Path(path)
    lines = text_lines(path)
    torn_possible = torn_tail_ok and not path.read_bytes().endswith(b"\n")
    rows = []
    for i, (n, raw) in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            if torn_possible and i == len(lines) - 1:
                break
            raise InputError(path, n, f"malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(path, n, "malformed JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise InputError(path, n, f"expected a JSON object, got a JSON {json_type(row)}")
        rows.append((n, row))
    return rows


def json_type(value):
    """The JSON name of a parsed value's type, for messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def check_text(value, path, line, field, *, one_line=False):
    """`value` (a str) unless it holds a control character (see the module docstring)."""
    found = (CONTROL_ONE_LINE if one_line else CONTROL).search(value)
    if found:
        raise InputError(path, line, f"field {field!r} holds the control character U+{ord(found.group()):04X} "
                                     f"at character {found.start() + 1} (text {value[:60]!r})")
    return value


def string(row, field, path, line, *, required=True, empty_ok=False, one_line=False):
    """row[field] checked to be a string without control characters (non-empty after strip
    unless empty_ok)."""
    if field not in row:
        if required:
            raise InputError(path, line, f"missing field {field!r}")
        return None
    value = row[field]
    if not isinstance(value, str):
        raise InputError(path, line, f"field {field!r} must be a string, got a JSON {json_type(value)}")
    if not empty_ok and not value.strip():
        raise InputError(path, line, f"empty field {field!r}")
    return check_text(value, path, line, field, one_line=one_line)


def file_rows(path, resume=False):
    """json_lines of a file that must hold rows; a resume file (torn tail dropped) may be empty."""
    rows = json_lines(path, torn_tail_ok=resume)
    if not rows and not resume:
        raise InputError(path, None, "no rows (empty file)")
    return rows


def unique_rows(path, check, key, what):
    """Rows of the JSONL file `path`, each passed to check(row, n), with `_line`; two rows with
    one key(row) are an error naming both lines."""
    out, seen = [], {}
    for n, row in file_rows(path):
        check(row, n)
        k = key(row)
        if k in seen:
            raise InputError(path, n, f"duplicate {what} (first at line {seen[k]})")
        seen[k] = n
        row["_line"] = n
        out.append(row)
    return out


def check_pair(row, path, line, fields=PAIR_FIELDS):
    """The text of one DPO pair; `fields` names the prompt / chosen / rejected fields (axolotl's
    field_prompt / field_chosen / field_rejected)."""
    _, chosen_f, rejected_f = fields
    for f in fields:
        string(row, f, path, line)
    if row[chosen_f].strip() == row[rejected_f].strip():
        raise InputError(path, line, f"{chosen_f} and {rejected_f} are the same text ({row[chosen_f][:60]!r}): "
                                     "the pair teaches nothing")
    return row


def read_pairs(path, *, fields=PAIR_FIELDS, check=check_pair):
    """Rows of a pairs file, each checked by check(row, path, line, fields); the same pair twice is
    an error."""
    return unique_rows(path, lambda row, n: check(row, path, n, fields),
                       lambda row: tuple(row[f] for f in fields), "pair")
