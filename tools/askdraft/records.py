"""One validating reader per file kind, so each rule is written once.

    read_split(path, *, cot=False)                       data/strategyqa_{train_baseline,train_cot,dev}.jsonl
    split_gold(path)                                     {question: "yes"|"no"} of a split file
    read_drafts(path, *, gold=None, gold_path=None, unknown="error", resume=False)
    drafts_by_question(path, **read_drafts kwargs)       {question: row}
    read_pairs(path, *, fields=PAIR_FIELDS)              data/pairs.jsonl (phase C)
    check_pair(row, path, line, fields=PAIR_FIELDS)      one pair (the pairs tool checks what it writes)

Every reader returns rows as dicts with their 1-based line number under "_line" and raises
askdraft.io.InputError naming the file and the line (or only the file, for an empty file)
for the first problem it finds. The line reading, the text checks (no control characters) and
the pair rules are askdraft_dpo.rows, the phase C plugin's own reader, so `askdraft pairs` and the
plugin check pairs by the same code.

Choices (also in the docs):
- Text fields hold no control characters (NUL, ESC, DEL, ...); tab, newline and carriage return
  are whitespace in multi-line fields (drafts, rationales, prompts); a question is one line.
- Split rows: `question` (a non-empty string of at most MAX_QUESTION_CHARS = 1000 characters) and
  `teacher_final` are required; `teacher_cot` is optional (required with cot=True) and must be
  a non-empty string when present. Any other field (e.g. `teacher_steps`, a list) is kept as
  it is and not checked here. A question twice in one split file (compared after lower-casing
  and collapsing whitespace) is an error naming both lines.
- Labels (`teacher_final`, a draft's `answer`, a pair's `gold`) accept case and surrounding
  whitespace variants ("Yes", " NO ") and are returned normalised to "yes" / "no"; anything
  else (true/false, "y", "yes.") is an error. `askdraft data` is more lenient with its *source*
  file (bools, "Yes.") because that is a user's file, not one of ours.
- Drafts rows: `question` (non-empty string) and `draft` (a string, possibly empty: an empty
  draft is a real outcome of `askdraft drafts`) are required; `tentative` (yes/no/unparsed,
  or none for a conclusion-free draft form; exact) and `answer` (a label) are optional except in resume files; other fields are kept.
  A question twice with the same draft (and answer) is merged into its first row; twice with a
  different draft or answer is an error naming both lines.
- Pairs rows: `prompt`, `chosen`, `rejected` are required non-empty strings (not only
  whitespace) and chosen must differ from rejected (compared after stripping whitespace);
  optional `flipped` (bool), `mode` (draft/answer/quality), `question` (string), `gold` (a label),
  `student_tentative` (yes/no/unparsed/none) are checked when present; other fields are kept.
  The same (prompt, chosen, rejected) twice is an error (it would train twice), not merged.
- An empty file (no rows) is an error for every kind except a resume (.partial) file.
"""
from askdraft_dpo import rows
from askdraft_dpo.rows import PAIR_FIELDS, file_rows, string, unique_rows

from askdraft.io import InputError, check_text, json_type

ANSWERS = ("yes", "no")
# "unparsed": the draft should state a tentative answer and does not; "none": its form states none
TENTATIVES = (*ANSWERS, "unparsed", "none")
PAIR_MODES = ("draft", "answer", "quality")
DRAFT_FIELDS = ("question", "draft", "tentative", "answer")
# StrategyQA's longest question is 132 characters (bigbench); one 7x longer is a broken row (a
# rationale pasted into the question, say), which phase A would otherwise train on unreported.
MAX_QUESTION_CHARS = 1000


def norm_question(q):
    """The key under which two questions count as the same (case and spacing ignored)."""
    return " ".join(q.lower().split())


def label(value, path, line, field):
    """"yes" / "no" from a label, ignoring case and surrounding whitespace."""
    if not isinstance(value, str):
        raise InputError(path, line, f"field {field!r} must be the string yes or no, got a JSON {json_type(value)}")
    key = check_text(value, path, line, field).strip().lower()
    if key not in ANSWERS:
        raise InputError(path, line, f"{field} {value!r} is not yes/no")
    return key


def check_question(q, path, line, field="question"):
    """A question: one line, no control characters, at most MAX_QUESTION_CHARS characters."""
    check_text(q, path, line, field, one_line=True)
    if len(q) > MAX_QUESTION_CHARS:
        raise InputError(path, line, f"{field} is {len(q)} characters, over the limit of {MAX_QUESTION_CHARS} "
                                     f"(a broken row? it starts {q[:60]!r})")
    return q


# ---------------------------------------------------------------- split files

def read_split(path, *, cot=False):
    """Rows of a split file (see the module docstring for the rules)."""
    def check(row, n):
        check_question(string(row, "question", path, n), path, n)
        if "teacher_final" not in row:
            raise InputError(path, n, "missing field 'teacher_final'")
        row["teacher_final"] = label(row["teacher_final"], path, n, "teacher_final")
        string(row, "teacher_cot", path, n, required=cot)
    return unique_rows(path, check, lambda row: norm_question(row["question"]), "question")


def split_gold(path):
    """{question: "yes"|"no"} of a split file."""
    return {r["question"]: r["teacher_final"] for r in read_split(path)}


# ---------------------------------------------------------------- drafts

def read_drafts(path, *, gold=None, gold_path=None, unknown="error", resume=False):
    """Rows of a drafts file ({question, draft, tentative?, answer?}) in file order.

    gold ({question: answer}, from split_gold(gold_path)): a row's `answer` must agree with it;
    a question not in gold is an error (unknown="error") or kept (unknown="keep": the caller
    filters, e.g. a drafts file written for more questions than --limit).
    resume: a file `askdraft drafts` is resuming (its own output or .partial): every field of
    DRAFT_FIELDS is required and no other, a torn last line is dropped, an empty file is fine.
    """
    if unknown not in ("error", "keep"):
        raise ValueError(f"unknown={unknown!r}")
    hint = " (delete the file to regenerate)" if resume else ""
    out, first = [], {}
    for n, row in file_rows(path, resume):
        try:
            q = string(row, "question", path, n, one_line=True)
            string(row, "draft", path, n, empty_ok=True)
            if resume:
                missing = [k for k in DRAFT_FIELDS if k not in row]
                extra = sorted(set(row) - set(DRAFT_FIELDS))
                if missing or extra:
                    raise InputError(path, n, f"expected fields {list(DRAFT_FIELDS)}, "
                                              f"missing {missing}, unexpected {extra}")
            if "tentative" in row and row["tentative"] not in TENTATIVES:
                raise InputError(path, n, f"tentative {row['tentative']!r} is not one of {list(TENTATIVES)}")
            if "answer" in row:
                row["answer"] = label(row["answer"], path, n, "answer")
            if gold is not None:
                if q not in gold:
                    if unknown == "error":
                        raise InputError(path, n, f"question not found in the gold file {gold_path}: {q[:60]!r}")
                elif "answer" in row and row["answer"] != gold[q]:
                    raise InputError(path, n, f"answer {row['answer']!r} disagrees with {gold_path} ({gold[q]!r})"
                                              + (" (a stale file?)" if resume else ""))
        except InputError as e:
            raise InputError(e.path, e.line, e.msg + hint) from None
        if q in first:
            prev = first[q]
            if (prev["draft"], prev.get("answer")) != (row["draft"], row.get("answer")):
                raise InputError(path, n, f"duplicate question with a different draft or answer "
                                          f"(first at line {prev['_line']}): {q[:60]!r}{hint}")
            continue  # an exact repeat: merged into its first row
        row["_line"] = n
        first[q] = row
        out.append(row)
    return out


def drafts_by_question(path, **kw):
    """{question: row} of read_drafts(path, **kw)."""
    return {r["question"]: r for r in read_drafts(path, **kw)}


# ---------------------------------------------------------------- pairs

def check_pair(row, path, line, fields=PAIR_FIELDS):
    """One DPO pair: the plugin's text rules (askdraft_dpo.rows.check_pair) and the fields
    `askdraft pairs` adds; `fields` names the prompt / chosen / rejected fields (axolotl's
    field_prompt / field_chosen / field_rejected)."""
    rows.check_pair(row, path, line, fields)
    if "flipped" in row and not isinstance(row["flipped"], bool):
        raise InputError(path, line, f"field 'flipped' must be true or false, got {row['flipped']!r}")
    if "mode" in row and row["mode"] not in PAIR_MODES:
        raise InputError(path, line, f"mode {row['mode']!r} is not one of {list(PAIR_MODES)}")
    if "question" in row:
        check_question(string(row, "question", path, line), path, line)
    if "gold" in row:
        label(row["gold"], path, line, "gold")
    if "student_tentative" in row and row["student_tentative"] not in TENTATIVES:
        raise InputError(path, line, f"student_tentative {row['student_tentative']!r} is not one of {list(TENTATIVES)}")
    return row


def read_pairs(path, *, fields=PAIR_FIELDS):
    """Rows of a pairs file, each checked by check_pair; the same pair twice is an error."""
    return rows.read_pairs(path, fields=fields, check=check_pair)
