"""`askdraft question-quality`: how well a draft's sub-questions find the facts its question needs.

For every question of a drafts file, the draft's sub-questions (its "Q: ..." lines, parsed with
templates.draft_questions) search the fact store (askdraft.retrieval: BM25 over the StrategyQA
facts, each query's top k merged round-robin into k facts). The score is recall@k: the share of
the question's own gold facts among the k found. Two controls, scored the same way on the same
questions: the question alone as the only query (retrieval without asking), and StrategyQA's
gold decomposition as the queries. A draft that asks nothing (no "Q:" line, or empty) scores 0.

The output JSON holds the store's description (what facts it holds, their sha256), k, each
query set's mean with a 95 % percentile-bootstrap interval over questions, the paired
differences between query sets (bootstrap CI of the mean difference, how many questions are
better / worse / equal, and the exact sign test on those that differ: stats.mcnemar_exact),
and the per-question values. The store holds every question's facts unless --store-split names
a split file (then only its questions' facts; every drafts question must be among them).
"""
import argparse
from pathlib import Path

from askdraft import stats, templates
from askdraft.data import DECOMPOSITIONS
from askdraft.io import InputError, positive_int, sha256_file, write_json
from askdraft.records import read_drafts
from askdraft.retrieval import DEFAULT_K, FactStore, relative

QUERY_SETS = ("question", "gold_decomposition", "draft")
DIFFERENCES = (("draft", "question"), ("draft", "gold_decomposition"), ("gold_decomposition", "question"))


def draft_recall(store, question, draft, k=DEFAULT_K):
    """(recall@k of the draft's sub-questions, how many it asks); 0 when it asks none."""
    asked = templates.draft_questions(draft)
    return (store.recall(question, asked, k) if asked else 0.0), len(asked)


def control_recall(store, question, k=DEFAULT_K):
    """The two controls' recall@k: the question alone, and StrategyQA's gold decomposition."""
    return {"question": store.recall(question, [question], k),
            "gold_decomposition": store.recall(question, store.decomposition(question), k)}


def score_question(store, question, draft, k=DEFAULT_K):
    """One question's row: recall@k for each query set, its gold-fact and sub-question counts."""
    r_draft, n_asked = draft_recall(store, question, draft, k)
    return {"question": question, "n_gold_facts": len(store.gold(question)), "n_subquestions": n_asked,
            "recall": {**control_recall(store, question, k), "draft": r_draft}}


def read_checked_drafts(path, store):
    """Drafts rows of `path` whose questions the store must hold (else an error naming the line)."""
    rows = read_drafts(path)
    for r in rows:
        if not store.holds(r["question"]):
            raise InputError(path, r["_line"], f"the fact store ({store.questions_label}) holds no facts of "
                                               f"question {r['question'][:80]!r}")
    return rows


def score_rows(store, rows, k=DEFAULT_K, desc="question quality"):
    from tqdm import tqdm

    return [score_question(store, r["question"], r["draft"], k)
            for r in tqdm(rows, desc=desc, unit="q", disable=len(rows) < 200)]


def compare(a, b):
    """Paired comparison of two per-question vectors: mean difference a - b with its bootstrap
    CI, and the counts and sign test of the questions where they differ."""
    diffs = [x - y for x, y in zip(a, b)]
    ci = stats.mean_ci(diffs)
    better = sum(d > 1e-12 for d in diffs)
    worse = sum(d < -1e-12 for d in diffs)
    return {"diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": ci["n"],
            "better": better, "worse": worse, "equal": len(diffs) - better - worse,
            "sign_test_p": stats.mcnemar_exact(better, worse)}


def summarize(per_question, query_sets=QUERY_SETS, differences=DIFFERENCES):
    """{query set: mean with CI} and {"a - b": paired comparison} over the per-question rows."""
    vectors = {s: [row["recall"][s] for row in per_question] for s in query_sets}
    return {"recall": {s: stats.mean_ci(v) for s, v in vectors.items()},
            "differences": {f"{a} - {b}": compare(vectors[a], vectors[b]) for a, b in differences}}


def score_stages(stage_rows, store, k=DEFAULT_K):
    """Several models' drafts of the same questions, paired: {stage: rows} -> per-question recall of
    each stage's sub-questions beside the two controls, each stage's mean, and the differences
    between stages (every later stage minus the first, e.g. C - B) and against the question alone."""
    stages = list(stage_rows)
    questions = [r["question"] for r in stage_rows[stages[0]]]
    drafts = {s: {r["question"]: r["draft"] for r in rows} for s, rows in stage_rows.items()}
    for s in stages[1:]:
        if set(drafts[s]) != set(questions):
            raise InputError(f"stage {s}", None, f"its drafts cover other questions than stage {stages[0]}'s "
                                                 f"({len(drafts[s])} vs {len(questions)}): nothing to pair")
    per_question = [{"question": q, "n_gold_facts": len(store.gold(q)),
                     "recall": {**control_recall(store, q, k),
                                **{s: draft_recall(store, q, drafts[s][q], k)[0] for s in stages}}}
                    for q in questions]
    pairs = [(s, stages[0]) for s in stages[1:]] + [(s, "question") for s in stages] + [("gold_decomposition", "question")]
    return {"k": k, "n": len(per_question), "stages": stages, "store": store.describe(),
            **summarize(per_question, ("question", "gold_decomposition", *stages), pairs),
            "per_question": per_question}


def run_stages(stage_files, out, k=DEFAULT_K, decompositions=DECOMPOSITIONS):
    """`--stage NAME=FILE ...`: score_stages over drafts files, written to `out` (atomically)."""
    store = build_store(decompositions)
    rows = {name: read_checked_drafts(path, store) for name, path in stage_files.items()}
    result = {"drafts": {name: relative(path) for name, path in stage_files.items()},
              "drafts_sha256": {name: sha256_file(path) for name, path in stage_files.items()},
              **score_stages(rows, store, k)}
    write_json(out, result)
    print_summary(result, out)
    return result


def summary_entry(path):
    """The compact block summary.json carries (means and differences, no per-question rows), or None."""
    import json
    path = Path(path)
    if not path.is_file():
        return None
    r = json.loads(path.read_text(encoding="utf-8"))
    return {k: r[k] for k in ("k", "n", "stages", "recall", "differences") if k in r} | {"file": path.name}


def default_out(drafts):
    drafts = Path(drafts)
    return drafts.with_name(drafts.stem + ".question_quality.json")


def build_store(decompositions=DECOMPOSITIONS, store_split=None):
    return FactStore.for_split(store_split, decompositions) if store_split else FactStore.build(decompositions)


def run(drafts, out=None, k=DEFAULT_K, decompositions=DECOMPOSITIONS, store_split=None):
    """Score a drafts file and write the JSON report (atomically); returns it."""
    if not isinstance(k, int) or k < 1:
        raise InputError("--k", None, f"must be a whole number >= 1, got {k!r}")
    store = build_store(decompositions, store_split)
    rows = read_checked_drafts(drafts, store)
    if k > len(store.facts):
        raise InputError("--k", None, f"k {k} is more than the {len(store.facts)} facts the store holds")
    per_question = score_rows(store, rows, k)
    result = {"drafts": relative(drafts), "drafts_sha256": sha256_file(drafts), "k": k,
              "store": store.describe(), "n": len(per_question),
              "drafts_without_subquestions": sum(r["n_subquestions"] == 0 for r in per_question),
              **summarize(per_question), "per_question": per_question}
    out = Path(out) if out else default_out(drafts)
    write_json(out, result)
    print_summary(result, out)
    return result


def print_summary(result, out):
    s = result["store"]
    print(f"{out}: recall@{result['k']} of each question's own gold facts, {result['n']} questions, "
          f"store {s['n_facts']} facts of {s['n_questions']} questions ({s['questions']})")
    for name, r in result["recall"].items():
        print(f"  {name:<20} {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    for name, d in result["differences"].items():
        print(f"  {name:<36} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]  "
              f"better {d['better']}, worse {d['worse']}, sign test p {d['sign_test_p']:.2g}")


def stage_arg(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. B=data/drafts/cot_phaseB/dev.jsonl), got {text!r}")
    return name, path


def cmd(args):
    if bool(args.drafts) == bool(args.stage):
        raise InputError("question-quality", None, "give either --drafts FILE or --stage NAME=FILE (repeatable)")
    if args.stage:
        if not args.out:
            raise InputError("--out", None, "--stage needs -o/--out (e.g. results/<model>/question_quality.json)")
        if args.store_split:
            raise InputError("--store-split", None, "--stage scores with the whole store")
        run_stages(dict(args.stage), args.out, args.k, args.decompositions)
        return
    run(args.drafts, args.out, args.k, args.decompositions, args.store_split)


def add_cli(sub):
    p = sub.add_parser("question-quality", help="recall@k of the gold facts found by a draft's sub-questions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drafts", help="drafts JSONL, e.g. data/drafts/cot_phaseB/dev.jsonl")
    p.add_argument("--stage", action="append", type=stage_arg, metavar="NAME=FILE",
                   help="several models' drafts of the same questions, paired (e.g. --stage B=... --stage C=...): "
                        "each one's recall, later stages minus the first, each minus the question alone")
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help="facts retrieved per question (default 5)")
    p.add_argument("--decompositions", default=str(DECOMPOSITIONS), help="StrategyQA facts and decompositions")
    p.add_argument("--store-split", help="hold only this split file's questions' facts (default: every question's)")
    p.add_argument("-o", "--out", help="output JSON (default: <drafts>.question_quality.json beside the drafts)")
    p.set_defaults(func=cmd)
    return p
