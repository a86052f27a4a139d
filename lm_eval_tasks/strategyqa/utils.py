"""Datasets for the strategyqa* tasks: dev rows with the prompt rendered from prompt_templates/."""
import random
from pathlib import Path

import datasets

from askdraft import templates
from askdraft.io import InputError
from askdraft.records import read_drafts, read_split

DEFAULT_DEV = "data/strategyqa_dev.jsonl"


def _dev(dev):
    return read_split(dev)


def _dataset(rows, drafts=None):
    """One row per dev question: prompt, the two choice continuations, label (index of gold),
    and the draft's tentative answer ("none" without one), to count overrides."""
    choices = [templates.answer_completion(a) for a in templates.ANSWERS]
    out = []
    for i, r in enumerate(rows):
        draft = None if drafts is None else drafts[i]
        out.append({"question": r["question"], "prompt": templates.answer_prompt(r["question"], draft),
                    "draft": draft or "", "tentative": templates.parse_tentative(draft) or "none",
                    "choices": choices, "answer": r["teacher_final"],
                    "label": templates.ANSWERS.index(r["teacher_final"])})
    return {"test": datasets.Dataset.from_list(out)}


def load_drafts(path, rows):
    """The drafts of `path` in the order of the dev rows; an error names any uncovered question."""
    if not path:
        raise InputError("--metadata", None, 'this task needs the drafts file: --metadata \'{"drafts": "data/drafts/<model>/dev.jsonl"}\'')
    # records.read_drafts: an empty draft is a real outcome, kept as ""; a question twice with
    # different drafts is an error (exact repeats merge); answers must agree with the dev file
    gold = {r["question"]: r["teacher_final"] for r in rows}
    by_q = {d["question"]: d["draft"] for d in read_drafts(path, gold=gold, gold_path="the dev file", unknown="keep")}
    missing = [r for r in rows if r["question"] not in by_q]
    if missing:
        raise InputError(path, None, f"{len(missing)} dev question(s) have no draft, e.g. {missing[0]['question']!r}")
    return [by_q[r["question"]] for r in rows]


def derangement(n, seed):
    """Sattolo's algorithm: a random cyclic permutation, so no index maps to itself."""
    perm, rng = list(range(n)), random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def question_only(dev=DEFAULT_DEV, **_):
    return _dataset(_dev(dev))


def own_draft(dev=DEFAULT_DEV, drafts=None, conclusion="keep", **_):
    """The model's own draft; conclusion "none" removes its tentative answer (the content alone)."""
    rows = _dev(dev)
    own = load_drafts(drafts, rows)
    if conclusion == "none":
        own = [templates.strip_tentative(d) for d in own]
    return _dataset(rows, own)


def teacher_draft(dev=DEFAULT_DEV, conclusion="none", shuffle=False, shuffle_seed=1234, **_):
    """The oracle ladder: the dev split's teacher draft (teacher_cot) with no / the gold / the
    flipped tentative answer; shuffle gives each question another question's teacher draft
    (the same derangement as strategyqa_shuffleddraft)."""
    rows = _dev(dev)
    flip = {"yes": "no", "no": "yes"}
    drafts = []
    for r in rows:
        if not (r.get("teacher_cot") or "").strip():
            raise InputError(dev, r["_line"], "the oracle tasks need the teacher draft (teacher_cot)")
        answer = {"gold": r["teacher_final"], "flipped": flip[r["teacher_final"]]}.get(conclusion)
        drafts.append(templates.draft_text(r["teacher_cot"], answer) if answer else r["teacher_cot"].strip())
    if shuffle:
        drafts = [drafts[j] for j in derangement(len(rows), shuffle_seed)]
    return _dataset(rows, drafts)


def empty_draft(dev=DEFAULT_DEV, **_):
    """An empty draft: "Student draft:" with nothing after it."""
    rows = _dev(dev)
    return _dataset(rows, [""] * len(rows))


def shuffled_draft(dev=DEFAULT_DEV, drafts=None, shuffle_seed=1234, **_):
    rows = _dev(dev)
    own = load_drafts(drafts, rows)
    perm = derangement(len(rows), shuffle_seed)
    return _dataset(rows, [own[j] for j in perm])


def answered_draft(dev=DEFAULT_DEV, drafts=None, queries="draft", answer_k=None, decompositions=None, **_):
    """A draft whose sub-questions are answered from the BM25 fact store (askdraft.answerer, the
    same function as `askdraft answer-drafts`): queries "draft" (the model's own sub-questions,
    needs `drafts`), "question" (the question alone) or "gold_decomposition". The store holds
    every question's own facts (open book)."""
    from askdraft import answerer
    from askdraft.data import DECOMPOSITIONS

    rows = _dev(dev)
    own = load_drafts(drafts, rows) if queries == "draft" else [None] * len(rows)
    store = answerer.fact_store(Path(decompositions) if decompositions else DECOMPOSITIONS)
    asked = [{**r, "answer": r["teacher_final"], "draft": d} for r, d in zip(rows, own)]
    answered = answerer.answered_drafts(store, asked, queries, int(answer_k or answerer.DEFAULT_K), dev)
    return _dataset(rows, [a["draft"] for a in answered])


def draft_request(dev=DEFAULT_DEV, **_):
    rows = _dev(dev)
    return {"test": datasets.Dataset.from_list(
        [{"question": r["question"], "prompt": templates.draft_prompt(r["question"]), "answer": r["teacher_final"]}
         for r in rows])}


def doc_to_choice(doc):
    return doc["choices"]
