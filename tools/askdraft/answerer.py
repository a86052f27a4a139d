"""`askdraft answer-drafts`: a draft's sub-questions answered from the BM25 fact store.

The student cannot answer its own sub-questions, but it can ask them. Here the asking is kept
and the answering is done by retrieval: the draft's sub-questions (its "Q: ..." lines,
templates.draft_questions) search the fact store (askdraft.retrieval: BM25 over the StrategyQA
facts, each query's ranking merged round-robin into k facts, the same k facts question quality
scores), and each retrieved fact becomes the answer of the sub-question that found it (the one
that ranks it highest; ties: the earlier). The answered draft is rendered by draft.jinja's
`steps` block ("Q: sub-question A: facts"), with no tentative answer: what the draft carries is
what was asked and found, and nothing can be copied from it.

Query sets (--queries):
  draft               the student's own sub-questions (a draft that asks none answers to "")
  question            the question alone as the one query: retrieval without asking
  gold_decomposition  StrategyQA's gold sub-questions: what asking well would find

The store holds every question's own facts (an open-book setting, as Self-Ask answers its
sub-questions with a search engine), so these numbers measure how well the questions find the
facts, not what the student knows. --store-split limits it to one split's questions.
The lm-eval tasks strategyqa_answered_{draft,question,gold} build the same drafts with the same
functions (lm_eval_tasks/strategyqa/utils.py), so a file written here is what they score.
"""
import functools
from pathlib import Path

from askdraft import templates
from askdraft.data import DECOMPOSITIONS
from askdraft.io import InputError, positive_int, sha256_file, write_json, write_jsonl
from askdraft.records import read_drafts, read_split
from askdraft.retrieval import DEFAULT_K, FactStore, relative, round_robin

QUERY_SETS = ("draft", "question", "gold_decomposition")


@functools.cache
def fact_store(decompositions=DECOMPOSITIONS, store_split=None):
    """The store of every question's facts in `decompositions` (or of one split's questions)."""
    if store_split:
        return FactStore.for_split(store_split, decompositions)
    return FactStore.build(decompositions)


def answered_steps(store, queries, k=DEFAULT_K):
    """[{q, a}]: each query with the retrieved facts it contributed to the round-robin top k
    (a query that found none keeps an empty answer)."""
    rankings = store.rankings(list(queries), k)
    found = {i: [] for i in range(len(queries))}
    for fact in round_robin(rankings, k):
        owner = min((r.index(fact), i) for i, r in enumerate(rankings) if fact in r)[1]
        found[owner].append(store.facts[fact])
    return [{"q": q, "a": " ".join(found[i])} for i, q in enumerate(queries)]


def queries_of(store, question, draft, query_set):
    if query_set == "draft":
        return templates.draft_questions(draft)
    if query_set == "question":
        return [question]
    if query_set == "gold_decomposition":
        return store.decomposition(question)
    raise InputError("--queries", None, f"unknown query set {query_set!r}; choose from {list(QUERY_SETS)}")


def answered_draft(store, question, draft=None, query_set="draft", k=DEFAULT_K):
    """The draft rendered with the store's facts as its answers ("" when it asks nothing)."""
    queries = queries_of(store, question, draft, query_set)
    return templates.teacher_draft(answered_steps(store, queries, k)) if queries else ""


def answered_drafts(store, rows, query_set="draft", k=DEFAULT_K, source=None):
    """Drafts rows ({question, draft, tentative "none", answer}) for rows with question, answer
    and (for the draft query set) draft; a question the store does not hold is an error."""
    from tqdm import tqdm

    out = []
    for r in tqdm(rows, desc=f"answer drafts ({query_set})", unit="q", disable=len(rows) < 200):
        if query_set == "gold_decomposition" and not store.holds(r["question"]):
            raise InputError(source, r.get("_line"), f"the fact store ({store.questions_label}) holds no "
                                                     f"decomposition of question {r['question'][:80]!r}")
        draft = answered_draft(store, r["question"], r.get("draft"), query_set, k)
        out.append({"question": r["question"], "draft": draft, "tentative": "none", "answer": r["answer"]})
    return out


def summary(evals):
    """summary.json's `answered` block: per stage that ran them, the answered tasks' accuracies and
    the paired differences of the answered own draft against no draft and the two controls."""
    from askdraft.evaluate import ABLATIONS, ANSWERED
    from askdraft.summary import acc_entry, paired, stage_key

    tasks = {**ANSWERED, "nodraft": ABLATIONS["nodraft"]}
    out = {}
    for stage in sorted({s for s, t in evals if t in ANSWERED.values()}, key=stage_key):
        c = {k: evals[stage, t][1] for k, t in tasks.items() if (stage, t) in evals}
        out[stage] = {k: acc_entry(v, evals[stage, tasks[k]][0]) for k, v in c.items() if k != "nodraft"}
        for other in ("nodraft", "answered_question", "answered_gold"):
            if "answered_draft" in c and other in c:
                out[stage][f"answered_draft_minus_{other}"] = paired(c["answered_draft"], c[other])
    return out or None


def report_path(out):
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def run(out, drafts=None, split=None, query_set="draft", k=DEFAULT_K, decompositions=DECOMPOSITIONS,
        store_split=None):
    """Write the answered drafts to `out` (and <out>.report.json); returns the report."""
    if (drafts is None) == (split is None):
        raise InputError("--drafts/--split", None, "give exactly one: a drafts file or a split file")
    if query_set == "draft" and drafts is None:
        raise InputError("--split", None, "--queries draft answers a drafts file's sub-questions: give --drafts")
    if not isinstance(k, int) or k < 1:
        raise InputError("--k", None, f"must be a whole number >= 1, got {k!r}")
    if drafts is not None:
        source, rows = drafts, read_drafts(drafts)
        missing = [r for r in rows if "answer" not in r]
        if missing:
            raise InputError(drafts, missing[0]["_line"], "missing field 'answer' (the gold label)")
    else:
        source, rows = split, [{**r, "answer": r["teacher_final"]} for r in read_split(split)]
    store = fact_store(Path(decompositions), store_split and Path(store_split))
    out_rows = answered_drafts(store, rows, query_set, k, source)
    write_jsonl(out, out_rows)
    n_asked = [len(queries_of(store, r["question"], r.get("draft"), query_set)) for r in rows]
    report = {"queries": query_set, "k": k, "source": relative(source), "source_sha256": sha256_file(source),
              "store": store.describe(), "n": len(out_rows), "asked_nothing": sum(n == 0 for n in n_asked),
              "mean_queries": round(sum(n_asked) / len(n_asked), 3) if n_asked else None,
              "out": relative(out), "out_sha256": sha256_file(out)}
    write_json(report_path(out), report)
    print(f"{out}: {len(out_rows)} drafts answered from the fact store ({store.describe()['n_facts']} facts of "
          f"{store.questions_label}), queries {query_set}, k {k}; {report['asked_nothing']} asked nothing")
    return report


def cmd(args):
    run(args.out, args.drafts, args.split, args.queries, args.k, args.decompositions, args.store_split)


def add_cli(sub):
    p = sub.add_parser("answer-drafts", help="a draft's sub-questions answered from the BM25 fact store",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--drafts", help="drafts JSONL (question, draft, answer), e.g. data/drafts/cot_phaseB/dev.jsonl")
    p.add_argument("--split", help="a split file instead (e.g. data/strategyqa_dev.jsonl), for the "
                                   "question / gold_decomposition controls")
    p.add_argument("--queries", choices=QUERY_SETS, default="draft",
                   help="what searches the store: the draft's sub-questions (default), the question alone, "
                        "or the gold decomposition")
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help="facts retrieved in all (round-robin)")
    p.add_argument("--decompositions", default=str(DECOMPOSITIONS), help="the facts file the store is built from")
    p.add_argument("--store-split", help="hold only this split file's questions' facts (default: every question's)")
    p.add_argument("-o", "--out", required=True, help="answered drafts JSONL (a report JSON is written beside it)")
    p.set_defaults(func=cmd)
