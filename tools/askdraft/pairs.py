"""`askdraft pairs` (also tools/build_dpo_pairs.py): student drafts + gold answers -> DPO pairs.

In draft and answer modes a pair's prompt is the DPO template with the student's own draft,
"Question: {q} Student draft: {draft}\\nFinal answer:", and chosen is the gold answer
(" yes" / " no"); quality mode pairs two drafts instead. The rejected side depends on --mode:
  draft  (default)  " " + the draft itself when its tentative answer is wrong, or, when the
                    student was already right, " " + the same draft with its conclusion
                    flipped (flipped: true). A draft without a tentative answer ("unparsed")
                    cannot be judged or flipped, so it is dropped and counted.
  answer            the wrong final answer (" no" / " yes"). Unparsed drafts are kept here:
                    the rejected side does not need the draft's conclusion, and the model
                    must still answer right after whatever draft it wrote. flipped marks
                    the pairs where the student was right, as in draft mode.
  quality           the pair teaches the draft itself: prompt = the draft request
                    ("Question: {q}\nDraft:"), chosen / rejected = " " + two drafts SAMPLED from
                    phase B for the same training question (--drafts and --drafts-2, e.g.
                    `askdraft drafts --temperature 0.8 --seed 2` and `--seed 3`), ordered by
                    question quality (askdraft.quality: recall@k of the question's own gold facts
                    found by the draft's sub-questions) over a fact store of the --gold split's
                    questions only, so no dev fact is seen. Pairs whose recalls differ by less than
                    --margin are dropped (ties and near-ties), as are identical drafts and
                    questions missing from one file (counted). The default margin 0.2 is one gold
                    fact of the largest StrategyQA questions (2-5 facts each): a pair is kept when
                    one draft finds at least one more of its question's facts than the other.
Conclusion-free drafts (tentative "none": `askdraft data --draft-form questions`) work in answer
and quality modes; draft mode needs a conclusion to judge or flip, and stops with an error naming them.
An empty draft is an input error (file and line) unless --allow-empty, which drops and counts
it. With --tokenizer, pairs longer than --max-len tokens (prompt + the longer completion,
no special tokens: phase C's sequence_len 256 less TRL's BOS and EOS) are dropped and counted.
Same inputs give the same bytes. A JSON report is written beside the output (<out>.report.json).
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

from askdraft import templates
from askdraft.io import InputError, positive_int, sha256_file, write_json, write_jsonl
from askdraft.records import check_pair, read_drafts, split_gold

MODES = ("draft", "answer", "quality")
ONE_DRAFT_MODES = ("draft", "answer")  # the modes that build pairs from one drafts file (the SG loop's)
DROP_REASONS = ("empty_draft", "unparsed", "too_long")
QUALITY_DROPS = ("tie", "near_tie", "identical", "empty_draft", "only_in_one", "too_long")
DEFAULT_MARGIN = 0.2
EPS = 1e-9  # recall differences are fractions like 1/5: compare them to the margin with a tolerance


def load_gold(path):
    """{question: "yes"|"no"} from a split file (data/strategyqa_{train_cot,dev}.jsonl)."""
    return split_gold(path)


def load_drafts(path, gold, gold_path, allow_empty=False):
    """Checked drafts rows ({question, draft, tentative?, answer?}) in file order
    (records.read_drafts; every question must be in the gold file)."""
    rows = read_drafts(path, gold=gold, gold_path=gold_path)
    if not allow_empty:
        for r in rows:
            if not r["draft"].strip():
                raise InputError(path, r["_line"], "empty draft (pass --allow-empty to drop such rows)")
    return rows


def make_pair(question, draft, gold, mode, missing="unparsed"):
    """One pair row, or None when the draft has no tentative answer in draft mode.
    missing: student_tentative of a draft without one ("none" for the conclusion-free form)."""
    tentative = templates.parse_tentative(draft)
    right = tentative == gold
    if mode == "draft":
        if tentative is None:
            return None
        rejected = " " + (templates.flip_tentative(draft) if right else draft)
    else:
        rejected = templates.answer_completion("no" if gold == "yes" else "yes")
    return {"prompt": templates.answer_prompt(question, draft), "chosen": templates.answer_completion(gold),
            "rejected": rejected, "flipped": right, "mode": mode, "question": question,
            "student_tentative": tentative or missing, "gold": gold}


def pair_length(count, pair):
    """Tokens of prompt + the longer completion (count: askdraft.sft_data.token_counter), counted
    the way axolotl checks sequence_len."""
    return count(pair["prompt"]) + max(count(pair["chosen"]), count(pair["rejected"]))


def load_counter(tokenizer):
    if tokenizer is None:
        return None
    from askdraft.sft_data import token_counter
    return token_counter(tokenizer)


def build(drafts_path, gold_path, mode="draft", tokenizer=None, max_len=254, allow_empty=False, **quality):
    """(pairs, report) from a drafts file and its split file; raises InputError on bad input.
    quality mode: build_quality's keyword arguments (drafts_2, margin, k, decompositions)."""
    if mode not in MODES:
        raise InputError("--mode", None, f"mode {mode!r} is not one of {MODES}")
    if mode == "quality":
        return build_quality(drafts_path, gold_path, tokenizer=tokenizer, max_len=max_len,
                             allow_empty=allow_empty, **quality)
    if quality.get("drafts_2"):
        raise InputError("--drafts-2", None, f"a second drafts file is for --mode quality, not {mode}")
    gold = load_gold(gold_path)
    rows = load_drafts(drafts_path, gold, gold_path, allow_empty)
    conclusion_free = [r for r in rows if r.get("tentative") == "none"]
    if mode == "draft" and conclusion_free:
        raise InputError(drafts_path, conclusion_free[0]["_line"],
                         f"{len(conclusion_free)} draft(s) of the conclusion-free form (tentative \"none\"): "
                         "draft mode needs a tentative answer to judge or flip; use --mode answer or quality")
    count = load_counter(tokenizer)
    pairs, dropped, longest = [], Counter(), 0
    unparsed = sum(templates.parse_tentative(r["draft"]) is None for r in rows
                   if r["draft"].strip() and r.get("tentative") != "none")
    for r in rows:
        draft = r["draft"].strip()
        missing = "none" if r.get("tentative") == "none" else "unparsed"
        pair = make_pair(r["question"], draft, gold[r["question"]], mode, missing) if draft else None
        if pair is None:
            dropped["unparsed" if draft else "empty_draft"] += 1
            continue
        if count is not None:
            length = pair_length(count, pair)
            longest = max(longest, length)
            if length > max_len:
                dropped["too_long"] += 1
                continue
        pairs.append(pair)
    if not pairs:
        raise InputError(drafts_path, None, f"no pairs left (dropped: {dict(dropped)})")
    flips = sum(p["flipped"] for p in pairs)
    report = {
        "mode": mode, "drafts": str(drafts_path), "drafts_sha256": sha256_file(drafts_path),
        "gold": str(gold_path), "gold_sha256": sha256_file(gold_path),
        "tokenizer": tokenizer and str(tokenizer), "max_len": max_len if count else None,
        "longest_pair_tokens": longest if count else None,
        "drafts_in": len(rows), "pairs": len(pairs), "flipped": flips,
        "flip_share": round(flips / len(pairs), 4), "unparsed_drafts": unparsed,
        "no_conclusion_drafts": len(conclusion_free),
        "dropped": {k: dropped[k] for k in DROP_REASONS},
        "student_tentative_accuracy": round(sum(templates.parse_tentative(r["draft"]) == gold[r["question"]]
                                                for r in rows) / len(rows), 4)
        if len(rows) > len(conclusion_free) else None,
    }
    return pairs, report


def quality_pair(question, gold, first, second, margin):
    """(pair, None) or (None, drop reason) for two drafts of one question, each (draft, recall)."""
    (d1, r1), (d2, r2) = first, second
    if d1 == d2:
        return None, "identical"
    diff = r1 - r2
    if abs(diff) < EPS:
        return None, "tie"
    if abs(diff) < margin - EPS:
        return None, "near_tie"
    (chosen, r_c), (rejected, r_r) = (first, second) if diff > 0 else (second, first)
    return {"prompt": templates.draft_prompt(question), "chosen": " " + chosen, "rejected": " " + rejected,
            "mode": "quality", "question": question, "gold": gold, "chosen_recall": round(r_c, 6),
            "rejected_recall": round(r_r, 6), "chosen_from": 1 if diff > 0 else 2}, None


def build_quality(drafts_path, gold_path, drafts_2=None, margin=DEFAULT_MARGIN, k=None, tokenizer=None,
                  max_len=254, allow_empty=False, decompositions=None):
    """(pairs, report) of quality mode (see the module docstring)."""
    from askdraft import quality
    from askdraft.retrieval import DEFAULT_K, FactStore

    if not drafts_2:
        raise InputError("--drafts-2", None, "quality mode needs a second sampled drafts file (--drafts-2)")
    if not 0 <= margin <= 1:
        raise InputError("--margin", None, f"must be between 0 and 1 (a recall difference), got {margin}")
    k = DEFAULT_K if k is None else k
    gold = load_gold(gold_path)
    store = FactStore.for_split(gold_path, *([decompositions] if decompositions else []))
    # empty drafts are dropped here, and counted, only with --allow-empty
    rows_1 = load_drafts(drafts_path, gold, gold_path, allow_empty)
    by_q_2 = {r["question"]: r for r in load_drafts(drafts_2, gold, gold_path, allow_empty)}
    count = load_counter(tokenizer)
    pairs, dropped, longest, recalls = [], Counter(), 0, {1: [], 2: []}
    questions_1 = set()
    from tqdm import tqdm
    for r in tqdm(rows_1, desc="quality pairs", unit="q", disable=len(rows_1) < 200):
        q = r["question"]
        questions_1.add(q)
        if q not in by_q_2:
            dropped["only_in_one"] += 1
            continue
        d1, d2 = r["draft"].strip(), by_q_2[q]["draft"].strip()
        if not d1 or not d2:
            dropped["empty_draft"] += 1
            continue
        s1, s2 = (quality.draft_recall(store, q, d, k)[0] for d in (d1, d2))
        recalls[1].append(s1)
        recalls[2].append(s2)
        pair, reason = quality_pair(q, gold[q], (d1, s1), (d2, s2), margin)
        if pair is not None and count is not None:
            length = pair_length(count, pair)
            longest = max(longest, length)
            if length > max_len:
                pair, reason = None, "too_long"
        if pair is None:
            dropped[reason] += 1
            continue
        pairs.append(pair)
    dropped["only_in_one"] += sum(q not in questions_1 for q in by_q_2)
    if not pairs:
        raise InputError(drafts_path, None, f"no quality pairs left (dropped: {dict(dropped)})")
    mean = lambda v: round(sum(v) / len(v), 4) if v else None  # noqa: E731
    report = {
        "mode": "quality",
        "rule": {"order_by": f"recall@{k} of the question's own gold facts, the draft's sub-questions as queries",
                 "k": k, "margin": margin, "dropped_when": "|recall difference| < margin (ties and near-ties), "
                 "identical drafts, a question missing from one file, an empty draft (--allow-empty)",
                 "store": store.describe()},
        "drafts": str(drafts_path), "drafts_sha256": sha256_file(drafts_path),
        "drafts_2": str(drafts_2), "drafts_2_sha256": sha256_file(drafts_2),
        "gold": str(gold_path), "gold_sha256": sha256_file(gold_path),
        "tokenizer": tokenizer and str(tokenizer), "max_len": max_len if count else None,
        "longest_pair_tokens": longest if count else None,
        "drafts_in": len(rows_1), "drafts_2_in": len(by_q_2), "questions_scored": len(recalls[1]),
        "pairs": len(pairs), "chosen_from_drafts": sum(p["chosen_from"] == 1 for p in pairs),
        "dropped": {k_: dropped[k_] for k_ in QUALITY_DROPS},
        "mean_recall": {"drafts": mean(recalls[1]), "drafts_2": mean(recalls[2]),
                        "better_of_two": mean([max(a, b) for a, b in zip(recalls[1], recalls[2])]),
                        "chosen": mean([p["chosen_recall"] for p in pairs]),
                        "rejected": mean([p["rejected_recall"] for p in pairs])},
    }
    return pairs, report


def report_path(out):
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def write(pairs, report, out):
    seen = {}
    for i, p in enumerate(pairs, 1):  # what phase C will read: the rules of records.read_pairs
        check_pair(p, out, i)
        key = (p["prompt"], p["chosen"], p["rejected"])
        if key in seen:
            raise InputError(out, i, f"duplicate pair (first at line {seen[key]}), not written")
        seen[key] = i
    write_jsonl(out, pairs)
    write_json(report_path(out), {**report, "out": str(out), "out_sha256": sha256_file(out)})


def run(drafts, gold, out, mode="draft", tokenizer=None, max_len=254, allow_empty=False, **quality):
    pairs, report = build(drafts, gold, mode, tokenizer, max_len, allow_empty, **quality)
    write(pairs, report, out)
    d = report["dropped"]
    if mode == "quality":
        m = report["mean_recall"]
        print(f"{out}: {report['pairs']} quality pairs from {report['questions_scored']} questions with two drafts "
              f"(margin {report['rule']['margin']}, recall@{report['rule']['k']}, store of "
              f"{report['rule']['store']['n_facts']} training facts); mean recall {m['drafts']} / {m['drafts_2']}, "
              f"chosen {m['chosen']} vs rejected {m['rejected']}; dropped: "
              + ", ".join(f"{v} {k}" for k, v in d.items()))
        print(f"report: {report_path(out)}")
        return report
    print(f"{out}: {report['pairs']} pairs ({mode} mode) from {report['drafts_in']} drafts; "
          f"flipped {report['flipped']} ({report['flip_share']:.1%}); unparsed drafts "
          f"{report['unparsed_drafts']}; dropped: {d['unparsed']} unparsed, {d['empty_draft']} empty, "
          f"{d['too_long']} over {max_len} tokens" + ("" if tokenizer else " (not checked: no --tokenizer)"))
    print(f"report: {report_path(out)}")
    return report


def cmd(args):
    run(args.drafts, args.gold, args.out, args.mode, args.tokenizer, args.max_len, args.allow_empty,
        **({"drafts_2": args.drafts_2, "margin": args.margin, "k": args.k, "decompositions": args.decompositions}
           if args.mode == "quality" or args.drafts_2 else {}))


def add_arguments(p):
    p.add_argument("--drafts", required=True, help="drafts JSONL, e.g. data/drafts/<model>/train.jsonl")
    p.add_argument("--gold", default="data/strategyqa_train_cot.jsonl",
                   help="the split file the drafts came from (question, teacher_final)")
    p.add_argument("--mode", choices=MODES, default="draft")
    p.add_argument("--drafts-2", help="quality mode: a second drafts file sampled for the same questions")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help="quality mode: the least recall difference a pair keeps (default 0.2: one gold fact)")
    p.add_argument("--k", type=positive_int, help="quality mode: facts retrieved per question (default 5)")
    p.add_argument("--decompositions",
                   help="quality mode: StrategyQA facts (default data/strategyqa/decompositions.jsonl)")
    p.add_argument("--tokenizer", help="model dir whose tokenizer counts pair lengths (phase C's base)")
    p.add_argument("--max-len", type=int, default=254, help="phase C sequence_len - 2 (BOS + EOS)")
    p.add_argument("--allow-empty", action="store_true", help="drop empty drafts instead of failing")
    p.add_argument("-o", "--out", default="data/pairs.jsonl")
    p.set_defaults(func=cmd)
    return p


def add_cli(sub):
    add_arguments(sub.add_parser("pairs", help="DPO pairs from drafts + gold answers -> data/pairs.jsonl",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv=None):
    from askdraft.command import standalone
    return standalone(add_arguments, "build_dpo_pairs", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
