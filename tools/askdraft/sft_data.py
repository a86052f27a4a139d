"""Render the split files through prompt_templates/ into axolotl `input_output` JSONL.

Each row is {"segments": [{"label": false, "text": prompt}, {"label": true, "text": completion}]}:
axolotl tokenises segments as they are (no chat template, no special tokens added) and
trains on the labelled one only, so the prompt is byte-for-byte what lm-eval scores.
BOS (when the tokenizer adds one, as a segment of its own) and EOS are written as text; they
tokenise to the special ids. Phase B rows over the length limit get their rationale shortened,
never the answer, and the count is reported: a decomposition draft keeps every sub-question and
cuts the sub-answers (shorten_steps), an explanation is cut to a word prefix (shorten_rationale).
The draft form is the data's (MANIFEST.json `draft_form`, `askdraft data --draft-form`): in the
`questions` form phase B's target is the draft with no "Tentative answer:", then the gold final.
"""
import json
from pathlib import Path

from askdraft import templates
from askdraft.data import FILES, check_no_leak, draft_form
from askdraft.io import InputError, write_json, write_jsonl
from askdraft.records import read_split

SFT_FILES = {"a": "phase_a.jsonl", "b": "phase_b.jsonl"}


def load_tokenizer(base):
    from transformers import AutoTokenizer
    if not (Path(base) / "config.json").is_file() and not (Path(base) / "tokenizer_config.json").is_file():
        raise InputError(base, None, "model directory not found (run `make base`)")
    return AutoTokenizer.from_pretrained(base)


# tokenizer classes that load tokenizer.json as it is: the `tokenizers` library alone counts the same
# tokens, without the seconds transformers takes to import (`askdraft recipe --pack-rows` before every
# packed training stage, `askdraft pairs --tokenizer`). Any other class (LlamaTokenizer, ...) may adjust
# it: transformers counts.
VERBATIM_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def token_counter(tokenizer_dir):
    """text -> its token count without special tokens, as the model's tokenizer counts it."""
    folder = Path(tokenizer_dir)
    config = folder / "tokenizer_config.json"
    cls = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    if cls in VERBATIM_TOKENIZERS and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        return lambda s: len(tok.encode(s, add_special_tokens=False).ids)
    return counter_of(load_tokenizer(tokenizer_dir))


def counter_of(tok):
    """text -> its token count without special tokens, by a loaded transformers tokenizer."""
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])


def special_texts(tok):
    bos = tok.bos_token if tok("a").input_ids[:1] == [tok.bos_token_id] and tok.bos_token_id is not None else ""
    return bos, tok.eos_token or ""


def row(prompt, completion, bos, eos):
    """BOS is a segment of its own: axolotl encodes each segment as a text of its own, and a
    SentencePiece tokenizer (Llama-2, Mistral) puts its "▁" word prefix only at the start of
    a text: "<s>Question" would become "Qu","es","tion", where lm-eval scores BOS + "▁Question"."""
    bos_segment = [{"label": False, "text": bos}] if bos else []
    return {"segments": bos_segment + [{"label": False, "text": prompt}, {"label": True, "text": completion + eos}]}


def phase_a_rows(path, tok):
    rows = read_split(path)
    bos, eos = special_texts(tok)
    return [row(templates.answer_prompt(r["question"]), templates.answer_completion(r["teacher_final"]), bos, eos)
            for r in rows]


def _row_length(count, question, rationale, answer, bos, eos, form="tentative"):
    """Tokens of the whole phase B row (prompt and target) for this rationale; each segment is
    counted as a text of its own, as axolotl encodes it."""
    r = row(templates.draft_prompt(question), templates.draft_completion(rationale, answer, form), bos, eos)
    return sum(count(s["text"]) for s in r["segments"])


def _most_that_fits(fits, most):
    """The largest k in 0..most with fits(k), for fits true up to some k (binary search); 0 if none."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def shorten_rationale(count, question, rationale, answer, max_len, bos, eos, form="tentative"):
    """The longest word-prefix of the rationale whose whole row fits max_len tokens."""
    def fits(text):
        return _row_length(count, question, text, answer, bos, eos, form) <= max_len
    if fits(rationale):
        return rationale, False
    words = rationale.split()
    kept = _most_that_fits(lambda k: fits(" ".join(words[:k])), len(words))
    return (" ".join(words[:kept]) if kept else None), True


def shorten_steps(count, question, steps, answer, max_len, bos, eos, form="tentative"):
    """The teacher draft of `steps` with every sub-answer cut to the largest common number of
    words (never a sub-question) that lets the whole row fit max_len tokens; then, if the
    questions alone are too long, the trailing sub-questions go (the first always stays)."""
    def text(cap, n=len(steps)):
        return templates.teacher_draft([{"q": s["q"], "a": " ".join(s["a"].split()[:cap])} for s in steps[:n]])

    def fits(draft):
        return _row_length(count, question, draft, answer, bos, eos, form) <= max_len
    longest = max(len(s["a"].split()) for s in steps)
    if fits(text(longest)):
        return text(longest), False
    cap = _most_that_fits(lambda k: fits(text(k)), longest)
    for n in range(len(steps), 0, -1):
        if fits(text(cap, n)):
            return text(cap, n), True
    return None, True


def phase_b_rows(path, tok, max_len, form="tentative"):
    rows = read_split(path, cot=True)
    bos, eos = special_texts(tok)
    count = counter_of(tok)
    out, shortened, dropped = [], 0, []
    for r in rows:
        if r.get("teacher_steps"):
            rat, cut = shorten_steps(count, r["question"], r["teacher_steps"], r["teacher_final"], max_len, bos, eos, form)
        else:
            rat, cut = shorten_rationale(count, r["question"], r["teacher_cot"], r["teacher_final"], max_len, bos, eos,
                                         form)
        if rat is None:
            dropped.append(r["_line"])
            continue
        shortened += cut
        out.append(row(templates.draft_prompt(r["question"]), templates.draft_completion(rat, r["teacher_final"], form),
                       bos, eos))
    return out, shortened, dropped


def build(data_dir, base, out_dir=None, max_len=128, limit=None, expect_form=None):
    """expect_form: the draft form the caller asks for; the data must have been built in it."""
    data_dir = Path(data_dir)
    out_dir = Path(out_dir or data_dir / "sft")
    form = draft_form(data_dir)
    if expect_form and form != expect_form:
        raise InputError(data_dir / "MANIFEST.json", None, f"the data's draft_form is {form!r}, not {expect_form!r}: "
                         f"rebuild it with `askdraft data --draft-form {expect_form}` (delete data/MANIFEST.json)")
    tok = load_tokenizer(base)
    for train in ("baseline", "cot"):  # both train files feed a phase
        check_no_leak(data_dir / FILES[train], data_dir / FILES["dev"])
    a = phase_a_rows(data_dir / FILES["baseline"], tok)[:limit]
    b, shortened, dropped = phase_b_rows(data_dir / FILES["cot"], tok, max_len, form)
    b = b[:limit]
    write_jsonl(out_dir / SFT_FILES["a"], a)
    write_jsonl(out_dir / SFT_FILES["b"], b)
    report = {"base": str(base), "max_len": max_len, "limit": limit, "draft_form": form, "phase_a_rows": len(a),
              "phase_b_rows": len(b), "phase_b_rationales_shortened": shortened,
              "phase_b_dropped_lines": dropped}
    write_json(out_dir / "REPORT.json", report)
    return report


def cmd(args):
    r = build(args.data, args.base, args.out, args.max_len, args.limit, args.draft_form)
    print(f"phase A: {r['phase_a_rows']} rows; phase B ({r['draft_form']} drafts): {r['phase_b_rows']} rows, "
          f"{r['phase_b_rationales_shortened']} rationales shortened to fit {r['max_len']} tokens, "
          f"{len(r['phase_b_dropped_lines'])} dropped (question alone too long)")


def add_cli(sub):
    p = sub.add_parser("sft-data", help="render the split files into axolotl training JSONL")
    p.add_argument("--data", default="data")
    p.add_argument("--base", required=True, help="base model dir (its tokenizer sets BOS/EOS and lengths)")
    p.add_argument("--out", help="default: DATA/sft")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--limit", type=int, help="keep the first N rows (smoke runs)")
    p.add_argument("--draft-form", choices=templates.DRAFT_FORMS,
                   help="fail unless the data was built in this draft form (default: whatever MANIFEST.json says)")
    p.set_defaults(func=cmd)
