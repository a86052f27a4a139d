"""StrategyQA -> the three split files the recipes read, deterministic and leak-free.

Sources, in order: a local file the user names (JSONL or JSON list, fields `question`,
`answer` yes/no or bool, optional `rationale`), the Hugging Face Hub when reachable, else the
StrategyQA task of `bigbench==1.0.0` (2290 questions; the target's explanation after "Yes."/"No."
is the explanation teacher), committed as data/strategyqa/bigbench_task.json: PyPI no longer
serves that release's files.

The teacher draft (`teacher_cot` of the cot/dev files) is, by default (`--teacher
decomposition`), StrategyQA's own decomposition joined by normalised question text from
data/strategyqa/decompositions.jsonl: each sub-question with its short answer from the facts
(`teacher_steps`), rendered by prompt_templates/draft.jinja. `--teacher explanation` keeps
bigbench's one-line explanation. `--folds K --fold F` makes fold F of a stratified K-fold split
the dev file (the rest is train); `--val-frac` carves a stratified validation file from train
(strategyqa_val.jsonl) that no training stage reads, for choosing settings honestly.
`--draft-form questions` (MANIFEST.json `draft_form`, read by sft-data and drafts) teaches drafts
with no "Tentative answer:" (sub-questions and answers; the final answer is trained on gold).
"""
import json
import random
from collections import Counter
from pathlib import Path

from askdraft import REPO_ROOT, templates
from askdraft.io import BOM, InputError, check_text, json_lines, json_type, read_jsonl, sha256_file, write_json, write_jsonl
from askdraft.records import check_question, read_split, string

# bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json of the bigbench 1.0.0 sdist (sha256 1bb398a5...)
BIGBENCH_TASK = REPO_ROOT / "data" / "strategyqa" / "bigbench_task.json"
BIGBENCH_TASK_SHA256 = "60af9081fed20102fd8bb1e02dc7d9f12238efcba33e4c1a56b4d61cb6409803"
TASK_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json"
HUB_ID = "tasksource/bigbench"  # config "strategyqa": the same 2290 questions
FILES = {
    "baseline": "strategyqa_train_baseline.jsonl",
    "cot": "strategyqa_train_cot.jsonl",
    "dev": "strategyqa_dev.jsonl",
    "val": "strategyqa_val.jsonl",
}
DECOMPOSITIONS = REPO_ROOT / "data" / "strategyqa" / "decompositions.jsonl"
TEACHERS = ("decomposition", "explanation")
STOPWORDS = set("""a an the of to in on for by with at from and or is are was were be been do does did
have has had can could would will should what which who whom whose when where why how that this
these those it its as than then there their they he she his her them not no yes any all more most
much many one into about if so""".split())
ANSWER_WORDS = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def norm_question(q):
    return " ".join(q.lower().split())


def _answer(value, path, line):
    if not isinstance(value, (str, bool)):
        raise InputError(path, line, f"label {value!r} is not yes/no (a JSON {json_type(value)})")
    text = check_text(value, path, line, "answer") if isinstance(value, str) else str(value)
    key = text.strip().lower().rstrip(".")
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
        check_text(target, path, f"example {i}", "target")
        head, _, rationale = target.partition(".")
        if head.strip().lower() != answer:
            raise InputError(path, f"example {i}", f"target {target[:30]!r} disagrees with target_scores")
        out.append({"question": ex["input"].strip(), "answer": answer,
                    "rationale": " ".join(rationale.split()), "_line": f"example {i}"})
    return out


def load_bigbench(path=BIGBENCH_TASK):
    if sha256_file(path) != BIGBENCH_TASK_SHA256:
        raise InputError(path, None, f"not bigbench 1.0.0's StrategyQA task.json (sha256 {BIGBENCH_TASK_SHA256[:12]}...)")
    return load_bigbench_json(json.loads(Path(path).read_text(encoding="utf-8")), path), path


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
            target = check_text(ex["targets"][0], f"hub:{HUB_ID}/{split}", i, "targets")
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


def load_decompositions(path=DECOMPOSITIONS):
    """{normalised question: {answer, decomposition, facts, _line}} of the derived StrategyQA file;
    the first of a repeated question is kept (the release has one question twice)."""
    out = {}
    for r in read_jsonl(path, required=("question", "answer", "decomposition", "facts")):
        for k in ("decomposition", "facts"):
            if not isinstance(r[k], list) or not r[k] or not all(isinstance(x, str) and x.strip() for x in r[k]):
                raise InputError(path, r["_line"], f"field '{k}' must be a non-empty list of non-empty strings")
            for x in r[k]:
                check_text(x, path, r["_line"], k)
        r["answer"] = _answer(r["answer"], path, r["_line"])
        out.setdefault(norm_question(r["question"]), r)
    return out


def _words(text):
    return {w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if w not in STOPWORDS}


def teacher_steps(decomposition, facts):
    """[{q, a}]: each sub-question with the facts that answer it. Each fact goes to the
    sub-question it shares the most content words with (ties: the sub-question at the fact's
    own position, facts being written in the decomposition's order); a sub-question no fact
    matches (e.g. "Is #2 greater than #1?") keeps an empty answer."""
    answers = [[] for _ in decomposition]
    q_words = [_words(q) for q in decomposition]
    for j, fact in enumerate(facts):
        f_words, own = _words(fact), min(j, len(decomposition) - 1)
        best = max(range(len(decomposition)), key=lambda i: (len(q_words[i] & f_words), -abs(own - i)))
        answers[best].append(fact.strip())
    return [{"q": q.strip(), "a": " ".join(a)} for q, a in zip(decomposition, answers)]


def join_decompositions(records, path=DECOMPOSITIONS):
    """Each record gets `steps` from the decomposition file; a question that does not join, or
    joins with another answer, is an error naming it."""
    table = load_decompositions(path)
    for r in records:
        d = table.get(norm_question(r["question"]))
        if d is None:
            raise InputError(path, None, f"no decomposition for question {r['question']!r} (source {r['_line']})")
        if d["answer"] != r["answer"]:
            raise InputError(path, d["_line"], f"answer {d['answer']!r} disagrees with the source's "
                             f"{r['answer']!r} for {r['question']!r}")
        r["steps"] = teacher_steps(d["decomposition"], d["facts"])
    return records


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


def kfold_split(records, folds, fold, seed):
    """Fold `fold` of a stratified `folds`-fold assignment (stats.kfold_assign) as dev, the rest
    as train, both in source order."""
    from askdraft.stats import kfold_assign
    if not 0 <= fold < folds:
        raise InputError("--fold", None, f"fold {fold} is not in 0..{folds - 1}")
    assign = kfold_assign([r["answer"] for r in records], k=folds, seed=seed)
    return ([r for r, f in zip(records, assign) if f != fold], [r for r, f in zip(records, assign) if f == fold])


def carve_val(train, frac, seed):
    """A stratified `frac` of train as a validation split (seeded); returns (train, val)."""
    if frac <= 0:
        return train, []
    return split(train, len(train) - max(1, round(frac * len(train))), seed + 1)


def draft_form(data_dir):
    """MANIFEST.json's `draft_form` in `data_dir`; "tentative" without a manifest or the field."""
    manifest = Path(data_dir) / "MANIFEST.json"
    doc = read_json_document(manifest)[1] if manifest.is_file() else {}
    form = doc.get("draft_form", "tentative") if isinstance(doc, dict) else None
    if form not in templates.DRAFT_FORMS:
        raise InputError(manifest, None, f"draft_form {form!r} is not one of {list(templates.DRAFT_FORMS)}")
    return form


def build(out_dir, source=None, n_train=2000, seed=1234, hub=True, teacher="decomposition",
          decompositions=DECOMPOSITIONS, folds=None, fold=None, val_frac=0.0, draft_form="tentative"):
    out_dir = Path(out_dir)
    if draft_form not in templates.DRAFT_FORMS:
        raise InputError("--draft-form", None, f"unknown draft form {draft_form!r}; choose from {list(templates.DRAFT_FORMS)}")
    if teacher not in TEACHERS:
        raise InputError("--teacher", None, f"unknown teacher {teacher!r}; choose from {list(TEACHERS)}")
    if source:
        records, origin = load_local(source), str(source)
    elif hub and hub_reachable():
        records, origin = load_hub(), f"hf-hub:{HUB_ID}/strategyqa"
    else:
        records, source = load_bigbench()
        origin = f"bigbench==1.0.0:{TASK_MEMBER}"
    for r in records:
        check_question(r["question"], source or origin, r["_line"])
    records, merged = dedupe(records, source or origin)
    if teacher == "decomposition":
        join_decompositions(records, decompositions)
    else:
        missing = [r["_line"] for r in records if not r["rationale"]]
        if missing:
            raise InputError(source or origin, missing[0], "no rationale (teacher_cot) for this question")
    if folds:
        train, dev = kfold_split(records, folds, fold, seed)
    else:
        if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train < len(records):
            raise InputError("--n-train", None, f"{n_train} train questions: {source or origin} has {len(records)} "
                                                f"distinct questions, so --n-train must be 1 to {len(records) - 1} "
                                                "(the rest are dev)")
        train, dev = split(records, n_train, seed)
    train, val = carve_val(train, val_frac, seed)
    (out_dir / "MANIFEST.json").unlink(missing_ok=True)  # never a manifest of other files
    assert not {norm_question(r["question"]) for r in train} & {norm_question(r["question"]) for r in dev + val}

    def cot(r):
        if teacher == "explanation":
            return {"question": r["question"], "teacher_cot": r["rationale"], "teacher_final": r["answer"]}
        return {"question": r["question"], "teacher_cot": templates.teacher_draft(r["steps"]),
                "teacher_final": r["answer"], "teacher_steps": r["steps"]}
    splits = [("baseline", train), ("cot", train), ("dev", dev)] + ([("val", val)] if val else [])
    if not val:  # a stale val file of an earlier build would pass for this one's
        (out_dir / FILES["val"]).unlink(missing_ok=True)
    write_jsonl(out_dir / FILES["baseline"], [{"question": r["question"], "teacher_final": r["answer"]} for r in train])
    write_jsonl(out_dir / FILES["cot"], [cot(r) for r in train])
    write_jsonl(out_dir / FILES["dev"], [cot(r) for r in dev])
    if val:
        write_jsonl(out_dir / FILES["val"], [cot(r) for r in val])
    manifest = {"source": origin, "seed": seed, "n_source": len(records) + merged,
                "exact_duplicates_merged": merged, "teacher": teacher, "draft_form": draft_form,
                "decompositions": str(decompositions) if teacher == "decomposition" else None,
                "decompositions_sha256": sha256_file(decompositions) if teacher == "decomposition" else None,
                "folds": folds, "fold": fold, "val_frac": val_frac, "splits": {}}
    for name, rows in splits:
        yes = Counter(r["answer"] for r in rows)["yes"]
        manifest["splits"][FILES[name]] = {"rows": len(rows), "yes": yes, "yes_share": round(yes / len(rows), 4),
                                           "sha256": sha256_file(out_dir / FILES[name])}
    write_json(out_dir / "MANIFEST.json", manifest)
    return manifest


def cmd(args):
    m = build(args.out, source=args.source, n_train=args.n_train, seed=args.seed, hub=not args.no_hub,
              teacher=args.teacher, folds=args.folds, fold=args.fold, val_frac=args.val_frac, draft_form=args.draft_form)
    print(f"source: {m['source']} ({m['n_source']} rows, {m['exact_duplicates_merged']} exact duplicates merged); "
          f"teacher: {m['teacher']}; draft form: {m['draft_form']}" + (f"; fold {m['fold']} of {m['folds']}" if m["folds"] else ""))
    for name, s in m["splits"].items():
        print(f"{name:36s} {s['rows']:5d} rows  yes {s['yes']:5d} ({100 * s['yes_share']:.1f} %)  sha256 {s['sha256'][:12]}")


def add_cli(sub):
    p = sub.add_parser("data", help="build the StrategyQA train/dev split files")
    p.add_argument("--source", help="local JSONL/JSON file (question, answer, rationale)")
    p.add_argument("--out", default="data")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-hub", action="store_true", help="skip the Hugging Face Hub even if reachable")
    p.add_argument("--teacher", choices=TEACHERS, default="decomposition",
                   help="teacher draft: StrategyQA's sub-questions with answers from its facts (default), "
                        "or bigbench's one-line explanation")
    p.add_argument("--draft-form", choices=templates.DRAFT_FORMS, default="tentative",
                   help="phase B's draft: tentative (ends in a tentative answer) or questions (no conclusion)")
    p.add_argument("--folds", type=int, help="K: a stratified K-fold split; --fold F is dev (--n-train is ignored)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--val-frac", type=float, default=0.0,
                   help="share of train held out as strategyqa_val.jsonl (for choosing settings; no stage trains on it)")
    p.set_defaults(func=cmd)
