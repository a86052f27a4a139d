"""StrategyQA -> the three split files the recipes read, deterministic and leak-free.

Sources, in order: a local file the user names (JSONL or JSON list, fields `question`,
`answer` yes/no or bool, optional `rationale`), the Hugging Face Hub when reachable, else the
StrategyQA task inside the `bigbench==1.0.0` source package on PyPI (2290 questions; the
target's explanation after "Yes."/"No." is the offline teacher rationale).
"""
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

from askdraft.download import CACHE, pypi_file
from askdraft.io import BOM, InputError, json_lines, json_type, sha256_file, write_json, write_jsonl
from askdraft.records import check_question, read_split, string

BIGBENCH = ("bigbench", "bigbench-1.0.0.tar.gz",
            "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
TASK_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json"
HUB_ID = "tasksource/bigbench"  # config "strategyqa": the same 2290 questions
FILES = {
    "baseline": "strategyqa_train_baseline.jsonl",
    "cot": "strategyqa_train_cot.jsonl",
    "dev": "strategyqa_dev.jsonl",
}
ANSWER_WORDS = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def norm_question(q):
    return " ".join(q.lower().split())


def _answer(value, path, line):
    if not isinstance(value, (str, bool)):
        raise InputError(path, line, f"label {value!r} is not yes/no (a JSON {json_type(value)})")
    key = str(value).strip().lower().rstrip(".")
    if key not in ANSWER_WORDS:
        raise InputError(path, line, f"label {value!r} is not yes/no")
    return ANSWER_WORDS[key]


def read_json_document(path):
    """(text, parsed) of a .json file: UTF-8 (a leading BOM is accepted), errors name the line."""
    raw = path.read_bytes()
    raw = raw[len(BOM):] if raw.startswith(BOM) else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, raw[:e.start].count(b"\n") + 1, f"not UTF-8 text (byte {raw[e.start]:#04x})") from None
    if not text.strip():
        raise InputError(path, None, "no rows (empty file)")
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"malformed JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(path, None, "malformed JSON (nested too deeply)") from None


def json_list_items(text):
    """[(line, item)] of a JSON document that is a list: the line each item starts on."""
    decoder, items = json.JSONDecoder(), []
    i = text.index("[") + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "]":
            return items
        item, end = decoder.raw_decode(text, i)
        items.append((text.count("\n", 0, i) + 1, item))
        i = end


def load_local(path):
    """Records {question, answer, rationale, _line} from a user's JSONL, JSON list or bigbench
    task.json file. A source row needs a non-empty string `question` and an `answer` (yes/no in
    any case, with or without a final ".", or a JSON boolean); `rationale` (a string or null) is
    optional here; other fields are ignored. A leading UTF-8 BOM is accepted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found")
    if path.suffix == ".json":
        text, doc = read_json_document(path)
        if isinstance(doc, dict):
            if "examples" in doc:
                return load_bigbench_json(doc, path)
            raise InputError(path, None, "a .json source is a list of {question, answer, rationale} objects or a "
                                         f"bigbench task with \"examples\"; got an object with keys {sorted(doc)[:8]}")
        if not isinstance(doc, list):
            raise InputError(path, None, f"a .json source is a list of objects; got a JSON {json_type(doc)}")
        rows = json_list_items(text)
        for line, r in rows:
            if not isinstance(r, dict):
                raise InputError(path, line, f"expected a JSON object, got a JSON {json_type(r)}")
    else:
        rows = json_lines(path)
    if not rows:
        raise InputError(path, None, "no rows (empty file)")
    out = []
    for line, r in rows:
        question = string(r, "question", path, line)
        if "answer" not in r:
            raise InputError(path, line, "missing field 'answer'")
        rationale = r.get("rationale")
        if rationale is not None:
            string(r, "rationale", path, line, empty_ok=True)
        out.append({"question": question.strip(), "answer": _answer(r["answer"], path, line),
                    "rationale": (rationale or "").strip(), "_line": line})
    return out


def load_bigbench_json(task, path):
    out = []
    if not isinstance(task["examples"], list) or not task["examples"]:
        raise InputError(path, None, "\"examples\" is not a non-empty list")
    for i, ex in enumerate(task["examples"], 1):
        if not isinstance(ex, dict):
            raise InputError(path, f"example {i}", f"expected a JSON object, got a JSON {json_type(ex)}")
        string(ex, "input", path, f"example {i}")
        scores = ex.get("target_scores", {})
        if not isinstance(scores, dict) or sorted(scores) != ["No", "Yes"] or sorted(scores.values()) != [0, 1]:
            raise InputError(path, f"example {i}", "target_scores is not a Yes/No pair")
        answer = "yes" if scores["Yes"] == 1 else "no"
        target = ex.get("target", "")
        if not isinstance(target, str):
            raise InputError(path, f"example {i}", f"target must be a string, got a JSON {json_type(target)}")
        head, _, rationale = target.partition(".")
        if head.strip().lower() != answer:
            raise InputError(path, f"example {i}", f"target {target[:30]!r} disagrees with target_scores")
        out.append({"question": ex["input"].strip(), "answer": answer,
                    "rationale": " ".join(rationale.split()), "_line": f"example {i}"})
    return out


def load_bigbench():
    cached = CACHE / "strategyqa_task.json"
    if not cached.is_file():
        sdist = pypi_file(*BIGBENCH)
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(TASK_MEMBER).read()
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
    return load_bigbench_json(json.loads(cached.read_text(encoding="utf-8")), cached), cached


def hub_reachable(timeout=3):
    import os
    import urllib.request
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen("https://huggingface.co/api/datasets/" + HUB_ID, timeout=timeout)
        return True
    except Exception:
        return False


def load_hub():
    import datasets
    ds = datasets.load_dataset(HUB_ID, "strategyqa")
    out = []
    for split in sorted(ds):
        for i, ex in enumerate(ds[split], 1):
            target = ex["targets"][0]
            head, _, rationale = target.partition(".")
            out.append({"question": ex["inputs"].strip().removeprefix("Q:").strip().split("\n")[0],
                        "answer": _answer(head, f"hub:{HUB_ID}/{split}", i),
                        "rationale": " ".join(rationale.split()), "_line": f"{split} row {i}"})
    return out


def dedupe(records, path):
    """Merge exact repeats (the bigbench file holds one); a question repeated with different
    content is an error naming both places."""
    seen, out, merged = {}, [], 0
    for r in records:
        key = norm_question(r["question"])
        if key in seen:
            first = seen[key]
            if (first["answer"], first["rationale"]) != (r["answer"], r["rationale"]):
                raise InputError(path, r["_line"], f"duplicate question (first at {first['_line']}) with a different answer or rationale")
            merged += 1
            continue
        seen[key] = r
        out.append(r)
    return out, merged


def split(records, n_train, seed):
    """Stratified by answer: the dev share of yes equals the whole set's (to rounding)."""
    rng = random.Random(seed)
    by_answer = {a: sorted((r for r in records if r["answer"] == a), key=lambda r: norm_question(r["question"]))
                 for a in ("yes", "no")}
    n_dev = len(records) - n_train
    if n_dev <= 0:
        raise ValueError(f"{len(records)} questions leave none for dev after {n_train} train")
    dev_yes = round(n_dev * len(by_answer["yes"]) / len(records))
    train, dev = [], []
    for a, n_dev_a in (("yes", dev_yes), ("no", n_dev - dev_yes)):
        rows = by_answer[a][:]
        rng.shuffle(rows)
        dev += rows[:n_dev_a]
        train += rows[n_dev_a:]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def check_no_leak(train_path, dev_path):
    """Raise if a dev question (normalised) is also in the train file."""
    train = {norm_question(r["question"]): r["_line"] for r in read_split(train_path)}
    for r in read_split(dev_path):
        if norm_question(r["question"]) in train:
            raise InputError(dev_path, r["_line"], f"question also in {train_path}:{train[norm_question(r['question'])]}")


def build(out_dir, source=None, n_train=2000, seed=1234, hub=True):
    out_dir = Path(out_dir)
    if source:
        records, origin = load_local(source), str(source)
    elif hub and hub_reachable():
        records, origin = load_hub(), f"hf-hub:{HUB_ID}/strategyqa"
    else:
        records, cached = load_bigbench()
        origin = f"pypi:bigbench==1.0.0:{TASK_MEMBER}"
        source = cached
    for r in records:
        check_question(r["question"], source or origin, r["_line"])
    records, merged = dedupe(records, source or origin)
    missing = [r["_line"] for r in records if not r["rationale"]]
    if missing:
        raise InputError(source or origin, missing[0], "no rationale (teacher_cot) for this question")
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train < len(records):
        raise InputError("--n-train", None, f"{n_train} train questions: {source or origin} has {len(records)} "
                                            f"distinct questions, so --n-train must be 1 to {len(records) - 1} "
                                            "(the rest are dev)")
    train, dev = split(records, n_train, seed)
    (out_dir / "MANIFEST.json").unlink(missing_ok=True)  # never a manifest of other files
    assert not {norm_question(r["question"]) for r in train} & {norm_question(r["question"]) for r in dev}
    def cot(r):
        return {"question": r["question"], "teacher_cot": r["rationale"], "teacher_final": r["answer"]}
    write_jsonl(out_dir / FILES["baseline"], [{"question": r["question"], "teacher_final": r["answer"]} for r in train])
    write_jsonl(out_dir / FILES["cot"], [cot(r) for r in train])
    write_jsonl(out_dir / FILES["dev"], [cot(r) for r in dev])
    manifest = {"source": origin, "seed": seed, "n_source": len(records) + merged,
                "exact_duplicates_merged": merged, "splits": {}}
    for name, rows in (("baseline", train), ("cot", train), ("dev", dev)):
        yes = Counter(r["answer"] for r in rows)["yes"]
        manifest["splits"][FILES[name]] = {"rows": len(rows), "yes": yes, "yes_share": round(yes / len(rows), 4),
                                           "sha256": sha256_file(out_dir / FILES[name])}
    write_json(out_dir / "MANIFEST.json", manifest)
    return manifest


def cmd(args):
    m = build(args.out, source=args.source, n_train=args.n_train, seed=args.seed, hub=not args.no_hub)
    print(f"source: {m['source']} ({m['n_source']} rows, {m['exact_duplicates_merged']} exact duplicates merged)")
    for name, s in m["splits"].items():
        print(f"{name:36s} {s['rows']:5d} rows  yes {s['yes']:5d} ({100 * s['yes_share']:.1f} %)  sha256 {s['sha256'][:12]}")


def add_cli(sub):
    p = sub.add_parser("data", help="build the StrategyQA train/dev split files")
    p.add_argument("--source", help="local JSONL/JSON file (question, answer, rationale)")
    p.add_argument("--out", default="data")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-hub", action="store_true", help="skip the Hugging Face Hub even if reachable")
    p.set_defaults(func=cmd)
