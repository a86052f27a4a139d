"""`askdraft pack-results FOLDER...`: a run folder's many small files as a few compressed ones.

A run writes `evals/<stage>.<task>.json` (the eval's meta) and `evals/<stage>.<task>.jsonl` (its
per-question rows). Packing turns `evals/` into ONE file, `evals.jsonl.gz`: for each eval, in
the order of its meta file's name, a line `{"meta": {...}}` with the meta as it was, followed by
that eval's rows, one JSON object a line, unchanged; a row belongs to the meta line above it.
`askdraft.summary.load_evals` (summarize, report, the notebook, the tests) reads either layout.
Folders that nothing reads file by file (`folds/`, a k-fold run's per-fold reports and logs;
`recipes/`, a run's copies of its recipes) become `<name>.tar.gz`, and the run's logs (`*.log`,
`*.log.gz`, the judge's `judge.calls.jsonl`), when there are two or more, `logs.tar.gz`. Each
`attribution/<folder>/` of heatmap PNGs becomes one `attribution/<folder>.png`, the heatmaps top
to bottom (the report links it). All are written atomically and byte-for-byte deterministically
(sorted members, gzip and tar times 0), the archives checked against the originals, and only
then are the originals removed. Files starting with "." in `evals/` (make's `.done` stamp, a --limit run's dev subset)
are not kept. Packing a packed folder does nothing.
"""
import argparse
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

from askdraft.io import InputError, atomic_open, dumps, json_lines, read_jsonl, strip_line

PACKED = "evals.jsonl.gz"
ARCHIVED = ("folds", "recipes")  # subfolders read only as a whole (by people), never file by file
LOGS = ("*.log", "*.log.gz", "*.calls.jsonl")


def folder_evals(folder):
    """{(stage, task): (meta, rows)} of an evals/ folder as runs write it (rows may be .jsonl.gz)."""
    evals = {}
    for meta_path in sorted(Path(folder).glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(meta_path, e.lineno, f"malformed JSON ({e.msg})") from None
        for k in ("stage", "task"):
            if k not in meta:
                raise InputError(meta_path, None, f"missing field {k!r}")
        jsonl = Path(folder) / f"{meta['stage']}.{meta['task']}.jsonl"
        gz = jsonl.with_name(jsonl.name + ".gz")
        rows = read_jsonl(gz if not jsonl.is_file() and gz.is_file() else jsonl,
                          required=("question", "correct"), allow_extra=True)
        evals[meta["stage"], meta["task"]] = (meta, [strip_line(r) for r in rows])
    return evals


def read_packed(path):
    """{(stage, task): (meta, rows)} of a packed evals.jsonl.gz (the format in this module's doc)."""
    evals, current = {}, None
    for n, obj in json_lines(path):
        if "meta" in obj:
            meta = obj["meta"]
            if not isinstance(meta, dict) or "stage" not in meta or "task" not in meta:
                raise InputError(path, n, "a meta line needs an object with 'stage' and 'task'")
            if (meta["stage"], meta["task"]) in evals:
                raise InputError(path, n, f"{meta['stage']}.{meta['task']} packed twice")
            current = evals[meta["stage"], meta["task"]] = (meta, [])
        elif current is None:
            raise InputError(path, n, "a row before the first {\"meta\": ...} line")
        else:
            missing = [k for k in ("question", "correct") if k not in obj]
            if missing:
                raise InputError(path, n, f"missing field(s) {missing}")
            current[1].append(obj)
    return evals


def packed_bytes(evals):
    lines = []
    for (stage, task), (meta, rows) in sorted(evals.items(), key=lambda kv: f"{kv[0][0]}.{kv[0][1]}.json"):
        lines.append(dumps({"meta": meta}))
        for r in rows:
            if "meta" in r:
                raise InputError(f"{stage}.{task}", None, "a row has a 'meta' field: cannot pack it")
            lines.append(dumps(r))
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=9, mtime=0)


def pack_evals(root):
    """evals/ -> evals.jsonl.gz (evals already packed there are kept); True if it packed."""
    folder, out = Path(root) / "evals", Path(root) / PACKED
    if not folder.is_dir():
        return False
    known = {p.name for p in folder.iterdir() if p.name.startswith(".")}
    evals = folder_evals(folder)
    for stage, task in evals:
        known |= {f"{stage}.{task}.json", f"{stage}.{task}.jsonl", f"{stage}.{task}.jsonl.gz"}
    stray = sorted(p.name for p in folder.iterdir() if p.name not in known)
    if stray:
        raise InputError(folder, None, f"files that are no eval's meta or rows: {stray}; move them first")
    merged = {**(read_packed(out) if out.is_file() else {}), **evals}
    with atomic_open(out, "wb") as f:
        f.write(packed_bytes(merged))
    if read_packed(out) != merged:
        raise InputError(out, None, "the packed file does not read back as the evals it packed")
    shutil.rmtree(folder)
    return True


def _tar_info(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = size, 0, 0, 0, "", "", 0o644
    return info


def write_tar(root, out, files):
    """files (under root) -> out, a .tar.gz of them by their path relative to root, deterministic;
    checked against the files, which are then removed."""
    files = sorted(files)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            data = p.read_bytes()
            tar.addfile(_tar_info(p.relative_to(root).as_posix(), len(data)), io.BytesIO(data))
    with atomic_open(out, "wb") as f:
        f.write(buf.getvalue())
    with tarfile.open(out) as tar:
        back = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    if back != {p.relative_to(root).as_posix(): p.read_bytes() for p in files}:
        raise InputError(out, None, "the archive does not read back as the files it packed")
    for p in files:
        p.unlink()


def archive(root, name):
    """root/name/ -> root/name.tar.gz; True if it archived."""
    folder, out = Path(root) / name, Path(root) / f"{name}.tar.gz"
    if not folder.is_dir():
        return False
    if out.exists():
        raise InputError(out, None, f"exists beside {name}/: unpack it or move one of them first")
    write_tar(root, out, [p for p in folder.rglob("*") if p.is_file()])
    shutil.rmtree(folder)
    return True


def archive_logs(root):
    """The run's logs (*.log, *.log.gz, the judge's *.calls.jsonl) -> logs.tar.gz, when there are
    two or more (one log stays as it is); True if it archived."""
    root, out = Path(root), Path(root) / "logs.tar.gz"
    logs = sorted({p for pattern in LOGS for p in root.glob(pattern) if p.is_file()})
    if len(logs) < 2:
        return False
    if out.exists():
        raise InputError(out, None, f"exists beside logs {[p.name for p in logs]}: move one of them first")
    write_tar(root, out, logs)
    return True


def stitch_heatmaps(root):
    """Each attribution/<folder>/ of heatmap PNGs -> attribution/<folder>.png, the heatmaps in
    name order top to bottom (what the report shows, in one image); the names it wrote."""
    from PIL import Image
    done = []
    for folder in sorted(p for p in (Path(root) / "attribution").glob("*") if p.is_dir()):
        pngs, out = sorted(folder.glob("*.png")), folder.with_suffix(".png")
        if not pngs or any(p.suffix != ".png" for p in folder.iterdir()):
            continue  # not a folder of heatmaps only
        if out.exists():
            raise InputError(out, None, f"exists beside {folder.name}/: move one of them first")
        images = [Image.open(p).convert("RGBA") for p in pngs]
        sheet = Image.new("RGBA", (max(i.width for i in images), sum(i.height for i in images)), "white")
        y = 0
        for image in images:
            sheet.paste(image, (0, y))
            y += image.height
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", optimize=True)
        with atomic_open(out, "wb") as f:
            f.write(buf.getvalue())
        shutil.rmtree(folder)
        done.append(out.relative_to(root).as_posix())
    return done


def pack(root):
    """Pack one run folder; the names of what it packed (empty when there was nothing to pack)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, None, "not a folder")
    done = [PACKED] if pack_evals(root) else []
    done += [f"{name}.tar.gz" for name in ARCHIVED if archive(root, name)]
    done += ["logs.tar.gz"] if archive_logs(root) else []
    return done + stitch_heatmaps(root)


def cmd(args):
    for folder in args.folders:
        done = pack(folder)
        print(f"{folder}: {', '.join(done) if done else 'nothing to pack'}")


def add_cli(sub):
    p = sub.add_parser("pack-results", help="a run folder's evals/ as one evals.jsonl.gz, folds/ and logs as .tar.gz, heatmaps as one PNG each",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run folder(s), e.g. results/<model>")
    p.set_defaults(func=cmd)
    return p
