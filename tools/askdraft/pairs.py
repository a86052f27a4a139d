"""`askdraft pairs` (also tools/build_dpo_pairs.py): student drafts + gold answers -> DPO pairs.

Every pair's prompt is the DPO template with the student's own draft,
"Question: {q} Student draft: {draft}\\nFinal answer:", and chosen is the gold answer
(" yes" / " no"). The rejected side depends on --mode:
  draft  (default)  " " + the draft itself when its tentative answer is wrong, or, when the
                    student was already right, " " + the same draft with its conclusion
                    flipped (flipped: true). A draft without a tentative answer ("unparsed")
                    cannot be judged or flipped, so it is dropped and counted.
  answer            the wrong final answer (" no" / " yes"). Unparsed drafts are kept here:
                    the rejected side does not need the draft's conclusion, and the model
                    must still answer right after whatever draft it wrote. flipped marks
                    the pairs where the student was right, as in draft mode.
Conclusion-free drafts (tentative "none": `askdraft data --draft-form questions`) work in answer
mode only; draft mode needs a conclusion to judge or flip, and stops with an error naming them.
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
from askdraft.io import InputError, sha256_file, write_json, write_jsonl
from askdraft.records import check_pair, read_drafts, split_gold

MODES = ("draft", "answer")
DROP_REASONS = ("empty_draft", "unparsed", "too_long")


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


def pair_length(tok, pair):
    """Tokens of prompt + the longer completion, counted the way axolotl checks sequence_len."""
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return n(pair["prompt"]) + max(n(pair["chosen"]), n(pair["rejected"]))


def build(drafts_path, gold_path, mode="draft", tokenizer=None, max_len=254, allow_empty=False):
    """(pairs, report) from a drafts file and its split file; raises InputError on bad input."""
    if mode not in MODES:
        raise InputError("--mode", None, f"mode {mode!r} is not one of {MODES}")
    gold = load_gold(gold_path)
    rows = load_drafts(drafts_path, gold, gold_path, allow_empty)
    conclusion_free = [r for r in rows if r.get("tentative") == "none"]
    if mode == "draft" and conclusion_free:
        raise InputError(drafts_path, conclusion_free[0]["_line"],
                         f"{len(conclusion_free)} draft(s) of the conclusion-free form (tentative \"none\"): "
                         "draft mode needs a tentative answer to judge or flip; use --mode answer")
    tok = None
    if tokenizer is not None:
        from askdraft.sft_data import load_tokenizer
        tok = load_tokenizer(tokenizer)
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
        if tok is not None:
            length = pair_length(tok, pair)
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
        "tokenizer": tokenizer and str(tokenizer), "max_len": max_len if tok else None,
        "longest_pair_tokens": longest if tok else None,
        "drafts_in": len(rows), "pairs": len(pairs), "flipped": flips,
        "flip_share": round(flips / len(pairs), 4), "unparsed_drafts": unparsed,
        "no_conclusion_drafts": len(conclusion_free),
        "dropped": {k: dropped[k] for k in DROP_REASONS},
        "student_tentative_accuracy": round(sum(templates.parse_tentative(r["draft"]) == gold[r["question"]]
                                                for r in rows) / len(rows), 4)
        if len(rows) > len(conclusion_free) else None,
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


def run(drafts, gold, out, mode="draft", tokenizer=None, max_len=254, allow_empty=False):
    pairs, report = build(drafts, gold, mode, tokenizer, max_len, allow_empty)
    write(pairs, report, out)
    d = report["dropped"]
    print(f"{out}: {report['pairs']} pairs ({mode} mode) from {report['drafts_in']} drafts; "
          f"flipped {report['flipped']} ({report['flip_share']:.1%}); unparsed drafts "
          f"{report['unparsed_drafts']}; dropped: {d['unparsed']} unparsed, {d['empty_draft']} empty, "
          f"{d['too_long']} over {max_len} tokens" + ("" if tokenizer else " (not checked: no --tokenizer)"))
    print(f"report: {report_path(out)}")
    return report


def cmd(args):
    run(args.drafts, args.gold, args.out, args.mode, args.tokenizer, args.max_len, args.allow_empty)


def add_arguments(p):
    p.add_argument("--drafts", required=True, help="drafts JSONL, e.g. data/drafts/<model>/train.jsonl")
    p.add_argument("--gold", default="data/strategyqa_train_cot.jsonl",
                   help="the split file the drafts came from (question, teacher_final)")
    p.add_argument("--mode", choices=MODES, default="draft")
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
