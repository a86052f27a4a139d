"""The validating readers (askdraft.records) and the bad-input defects they catch.

Property-based part: each reader gets random corruptions of a good file (hypothesis) and must
raise an InputError whose message starts with "<file>:<line>: " for the corrupted line; the
tools that read those files write nothing; the CLI exits 2 with the same message.
"""
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from askdraft import data, drafts, pairs, records, sft_data
from askdraft.io import InputError, text_lines

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [f"Is thing number {i} a red thing?" for i in range(6)]
GOLD = ["yes", "no", "yes", "no", "no", "yes"]


def split_rows():
    return [{"question": q, "teacher_cot": f"Thing {i} is red.", "teacher_final": g,
             "teacher_steps": [f"Is {i} red?", "Yes."]} for i, (q, g) in enumerate(zip(QUESTIONS, GOLD))]


def draft_rows():
    return [{"question": q, "draft": f"Is {i} red? Yes.\nTentative answer: {g}", "tentative": g, "answer": g}
            for i, (q, g) in enumerate(zip(QUESTIONS, GOLD))]


def pair_rows():
    return [{"prompt": f"Question: {q}\nStudent draft: d{i}\nFinal answer:", "chosen": f" {g}",
             "rejected": " no" if g == "yes" else " yes", "flipped": False, "mode": "answer", "question": q,
             "student_tentative": "unparsed", "gold": g} for i, (q, g) in enumerate(zip(QUESTIONS, GOLD))]


def dump(path, rows):
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r, ensure_ascii=False) + "\n").encode()
                              for r in rows))
    return path


KINDS = {
    # kind: (good rows, reader, required string fields, label fields, non-empty string fields)
    "split": (split_rows, lambda p: records.read_split(p, cot=True),
              ("question", "teacher_final", "teacher_cot"), ("teacher_final",), ("question", "teacher_cot")),
    "drafts": (draft_rows, lambda p: records.read_drafts(p, gold=dict(zip(QUESTIONS, GOLD)), gold_path="gold"),
               ("question", "draft"), ("answer",), ("question",)),
    "pairs": (pair_rows, records.read_pairs, ("prompt", "chosen", "rejected"), ("gold",),
              ("prompt", "chosen", "rejected")),
}
NON_STRINGS = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
BAD_LABELS = st.text(max_size=8).filter(lambda s: s.strip().lower() not in ("yes", "no"))
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc0", b"\x80", b"\xed\xa0\x80", b"\xe2\x82"])
CONTROL_CHARS = st.sampled_from(["\x00", "\x07", "\x0b", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"])


@st.composite
def corruption(draw, kind):
    """(rows as written, corrupted 1-based line, what was done)."""
    make, _, required, labels, nonempty = KINDS[kind]
    rows = make()
    i = draw(st.integers(0, len(rows) - 1))
    how = draw(st.sampled_from(["truncate", "bytes", "drop", "type", "label", "not-object", "empty",
                                "duplicate", "same-pair", "long-question", "control", "question-newline"]))
    row = rows[i]
    if how == "truncate":
        text = json.dumps(row)
        rows[i] = (text[:draw(st.integers(1, len(text) - 1))] + "\n").encode()
    elif how == "bytes":
        text = json.dumps(row).encode()
        k = draw(st.integers(0, len(text)))
        rows[i] = text[:k] + draw(INVALID_UTF8) + text[k:] + b"\n"
    elif how == "drop":
        field = draw(st.sampled_from(required))
        del row[field]
        how = f"drop:{field}"
    elif how == "type":
        row[draw(st.sampled_from(required))] = draw(NON_STRINGS)
    elif how == "label":
        row[draw(st.sampled_from(labels))] = draw(BAD_LABELS)
    elif how == "not-object":
        rows[i] = (json.dumps(draw(st.one_of(NON_STRINGS.filter(lambda v: not isinstance(v, dict)), st.text()))) + "\n").encode()
    elif how == "empty":
        row[draw(st.sampled_from(nonempty))] = draw(st.sampled_from(["", " ", "\t", "\u3000"]))
    elif how == "duplicate" or (how == "same-pair" and kind != "pairs"):
        i = max(i, 1)
        j = draw(st.integers(0, i - 1))
        if kind == "pairs":
            rows[i] = dict(rows[j])
        else:
            rows[i]["question"] = rows[j]["question"]
            rows[i]["draft" if kind == "drafts" else "teacher_cot"] = "something else"
    elif how == "same-pair":
        row["rejected"] = row["chosen"] if draw(st.booleans()) else row["chosen"].strip() + "  "
    elif how == "control":  # in any text field, at any place (a NUL pasted into a question, ...)
        field = draw(st.sampled_from(required + labels))
        k = draw(st.integers(0, len(row[field])))
        row[field] = row[field][:k] + draw(CONTROL_CHARS) + row[field][k:]
        how = f"control:{field}"
    elif how == "question-newline":  # a question is one line (a draft or a prompt may have several)
        row["question"] = row["question"].replace(" ", draw(st.sampled_from(["\n", "\r\n", "\r"])), 1)
    elif how == "long-question":
        field = "question" if kind != "drafts" else None
        if field is None:  # drafts have no length limit: a non-string question instead
            row["question"] = draw(NON_STRINGS)
        else:
            row[field] = "Is it " + "very " * 250 + "red?"
    return rows, i + 1, how


@contextlib.contextmanager
def tmpdir():
    """A temp dir removed after the example (hypothesis runs many examples per test function)."""
    with tempfile.TemporaryDirectory(prefix="askdraft-records-") as d:
        yield Path(d)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_good_files_read_back(kind, tmp_path):
    make, reader = KINDS[kind][:2]
    rows = reader(dump(tmp_path / f"{kind}.jsonl", make()))
    assert [r["_line"] for r in rows] == list(range(1, 7))
    if kind == "split":
        assert rows[0]["teacher_steps"] == ["Is 0 red?", "Yes."]  # extra optional fields are kept


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_corruption_is_an_error_naming_file_and_line(kind, data):
    rows, line, how = data.draw(corruption(kind), label="corruption")
    with tmpdir() as d:
        path = dump(d / f"{kind}.jsonl", rows)
        with pytest.raises(InputError) as e:
            KINDS[kind][1](path)
    assert str(e.value).startswith(f"{path}:{line}: "), (how, str(e.value))
    assert "Traceback" not in str(e.value) and len(str(e.value)) < 400


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pairs_tool_writes_nothing_on_bad_drafts_or_gold(data):
    kind = data.draw(st.sampled_from(["drafts", "split"]), label="which file")
    rows, line, how = data.draw(corruption(kind), label="corruption")
    assume(how != "drop:teacher_cot")  # optional in a gold file (the baseline split has none)
    with tmpdir() as d:
        bad = dump(d / f"{kind}.jsonl", rows)
        drafts_file = bad if kind == "drafts" else dump(d / "drafts_ok.jsonl", draft_rows())
        gold = bad if kind == "split" else dump(d / "gold_ok.jsonl", split_rows())
        out = d / "out" / "pairs.jsonl"
        with pytest.raises(InputError, match=rf"^{bad}:{line}: "):
            pairs.run(drafts_file, gold, out, mode="answer")
        assert not out.parent.exists() or not any(out.parent.iterdir())


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_cli_exits_2_with_file_and_line(data):
    rows, line, how = data.draw(corruption("drafts"), label="corruption")
    with tmpdir() as d:
        bad, gold = dump(d / "drafts.jsonl", rows), dump(d / "gold.jsonl", split_rows())
        out = d / "out" / "pairs.jsonl"
        r = subprocess.run([sys.executable, str(REPO / "tools/build_dpo_pairs.py"), "--drafts", str(bad),
                            "--gold", str(gold), "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert f"error: {bad}:{line}: " in r.stderr and "Traceback" not in r.stderr
        assert not out.parent.exists() or not any(out.parent.iterdir())


# ---------------------------------------------------------------- the reader's rules

def test_lines_split_on_newline_only_bom_and_crlf(tmp_path):
    rows = draft_rows()
    rows[1]["draft"] = "first\u2028second\u2029third"
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows).encode())
    assert len(text_lines(path)) == 6
    got = records.read_drafts(path)
    assert got[1]["draft"] == rows[1]["draft"] and [r["_line"] for r in got] == list(range(1, 7))
    # U+0085 and \x1c split lines for str.splitlines but not here; as control characters they are refused
    rows[1]["draft"] = "third\u0085fourth\x1c"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    assert len(text_lines(path)) == 6
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'draft' holds the control character U\+0085"):
        records.read_drafts(path)


def test_labels_accept_case_variants_and_exact_duplicates_merge(tmp_path):
    rows = split_rows()
    rows[0]["teacher_final"] = " Yes "
    assert records.read_split(dump(tmp_path / "s.jsonl", rows))[0]["teacher_final"] == "yes"
    d = draft_rows()
    d.insert(3, dict(d[1]))  # an exact repeat: merged into its first row
    got = records.read_drafts(dump(tmp_path / "d.jsonl", d))
    assert len(got) == 6 and got[1]["_line"] == 2
    for bad in ("true", "y", "yes.", "oui"):
        rows[0]["teacher_final"] = bad
        with pytest.raises(InputError, match=r"s\.jsonl:1: teacher_final .* is not yes/no"):
            records.read_split(dump(tmp_path / "s.jsonl", rows))


def test_empty_files_are_errors_except_resume_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    for reader in (records.read_split, records.read_drafts, records.read_pairs):
        with pytest.raises(InputError, match=r"e\.jsonl: no rows"):
            reader(empty)
    assert records.read_drafts(empty, resume=True) == []


def test_pairs_tool_checks_what_it_writes(tmp_path):
    good = pair_rows()
    for bad, msg in (([good[0], {**good[1], "rejected": good[1]["chosen"]}], "p.jsonl:2: chosen and rejected are the same"),
                     ([good[0], good[0]], r"p.jsonl:2: duplicate pair \(first at line 1\), not written")):
        with pytest.raises(InputError, match=msg):
            pairs.write(bad, {}, tmp_path / "p.jsonl")
        assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- drafts: resume

def test_generated_drafts_lose_control_characters():
    """A model can emit a NUL or ESC token: the drafts tool drops them, so its files read back."""
    assert drafts.cut_drafts(["Is it\x00 red?\tYes.\x1b\nTentative answer: yes\nFinal answer: yes"]) == [
        "Is it red?\tYes.\nTentative answer: yes"]


def test_resume_keeps_drafts_with_unicode_line_separators(tmp_path):
    split = dump(tmp_path / "dev.jsonl", split_rows())
    rows = draft_rows()
    for r in rows:
        r["draft"] = r["draft"].replace("\n", "\u2028") + "\u2029"
    out = tmp_path / "drafts" / "dev.jsonl"
    out.parent.mkdir()
    partial = Path(f"{out}.partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                       + '{"question": "torn', encoding="utf-8")  # a kill mid-write
    never = lambda: pytest.fail("the model must not load: every draft is done")  # noqa: E731
    c = drafts.draft_split(split, out, never)
    assert c["n"] == 6 and not c["skipped"] and not partial.exists()
    assert [r["draft"] for r in records.read_drafts(out)] == [r["draft"] for r in rows]
    assert drafts.draft_split(split, out, never)["skipped"]  # the re-run reads its own output


def test_drafts_sizes_are_checked_before_anything_is_written(tmp_path):
    split = dump(tmp_path / "dev.jsonl", split_rows())
    never = lambda: pytest.fail("no model")  # noqa: E731
    for kw, msg in (({"batch_size": 0}, "--batch-size: must be a whole number >= 1"),
                    ({"limit": -5}, "--limit: must be a whole number >= 1"), ({"limit": 0}, "--limit")):
        with pytest.raises(InputError, match=msg):
            drafts.draft_split(split, tmp_path / "d" / "dev.jsonl", never, **kw)
    assert not (tmp_path / "d").exists()
    from askdraft.cli import main
    for argv in (["--batch-size", "0"], ["--limit", "-5"]):
        with pytest.raises(SystemExit) as e:
            main(["drafts", "--base", "x", "--name", "n", *argv])
        assert e.value.code == 2


def test_lm_eval_task_refuses_conflicting_duplicate_drafts(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("strategyqa_utils", REPO / "lm_eval_tasks/strategyqa/utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    dev = dump(tmp_path / "dev.jsonl", split_rows())
    rows = draft_rows()
    ds = utils.own_draft(str(dev), str(dump(tmp_path / "d.jsonl", rows + [rows[2]])))["test"]  # exact repeat
    assert ds[2]["draft"] == rows[2]["draft"]
    with pytest.raises(InputError, match=r"d\.jsonl:7: duplicate question with a different draft .*line 3"):
        utils.own_draft(str(dev), str(dump(tmp_path / "d.jsonl", rows + [{**rows[2], "draft": "other"}])))


def test_evaluate_names_an_unknown_task():
    from lm_eval.tasks import TaskManager

    from askdraft import REPO_ROOT, evaluate
    known = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata={}).all_tasks
    evaluate.check_task_names(["strategyqa", "strategyqa_draft"], known)
    with pytest.raises(InputError, match=r"--tasks: unknown lm-eval task\(s\) \['strategyqa_drfat'\] "
                                         r"\('strategyqa_drfat': did you mean 'strategyqa_draft'\?\); this repo's"):
        evaluate.check_task_names(["strategyqa", "strategyqa_drfat"], known)


# ---------------------------------------------------------------- askdraft data

def source(path, n=20, rows=None, suffix="\n"):
    rows = rows if rows is not None else [
        {"question": f"Is thing {i} red?", "answer": "yes" if i % 2 else "no", "rationale": f"Thing {i}."}
        for i in range(n)]
    path.write_text("".join(json.dumps(r) + suffix for r in rows), encoding="utf-8")
    return rows


@pytest.mark.parametrize("line, bad, msg", [
    (3, {"question": 7, "answer": "yes", "rationale": "r"}, "field 'question' must be a string, got a JSON number"),
    (4, {"question": "Q?", "answer": ["yes"], "rationale": "r"}, r"label \['yes'\] is not yes/no"),
    (5, {"question": "Q?", "answer": "no", "rationale": {"a": 1}}, "field 'rationale' must be a string"),
    (6, {"question": "Is it " + "very " * 4000 + "red?", "answer": "no", "rationale": "r"},
     "question is 20010 characters, over the limit of 1000"),
    (2, [1, 2], "expected a JSON object, got a JSON array"),
    (7, {"question": "Is it\x00 red?", "answer": "no", "rationale": "r"}, r"field 'question' holds the control "
     r"character U\+0000 at character 6"),
    (8, {"question": "Is it red?", "answer": "no", "rationale": "Red\x1b[0m."}, "field 'rationale' holds the control "
     r"character U\+001B"),
    (9, {"question": "Is it\nred?", "answer": "no", "rationale": "r"}, r"field 'question' holds the control "
     r"character U\+000A"),
    (10, {"question": "Is it red?", "answer": "no\x07", "rationale": "r"}, r"field 'answer' holds the control"),
])
def test_data_source_rows(tmp_path, line, bad, msg):
    rows = source(tmp_path / "src.jsonl")
    rows[line - 1] = bad
    source(tmp_path / "src.jsonl", rows=rows)
    with pytest.raises(InputError, match=rf"src\.jsonl:{line}: {msg}"):
        data.build(tmp_path / "out", source=tmp_path / "src.jsonl", n_train=10, teacher="explanation")
    assert not (tmp_path / "out").exists()


def test_data_source_files(tmp_path):
    src = tmp_path / "src.jsonl"
    rows = source(src)
    raw = src.read_bytes()
    src.write_bytes(raw[:40] + b"\xff" + raw[40:])
    with pytest.raises(InputError, match=r"src\.jsonl:1: not UTF-8 text \(byte 0xff"):
        data.build(tmp_path / "out", source=src, n_train=10, teacher="explanation")
    src.write_bytes(b"")
    with pytest.raises(InputError, match=r"src\.jsonl: no rows"):
        data.build(tmp_path / "out", source=src, n_train=10, teacher="explanation")
    j = tmp_path / "src.json"
    for doc, msg in (({"rows": []}, r"src\.json: a \.json source is a list .* keys \['rows'\]"),
                     ("yes", r"src\.json: a \.json source is a list of objects; got a JSON string"),
                     ({"examples": "x"}, r'src\.json: "examples" is not a non-empty list'),
                     ({"examples": [{"input": "Q?", "target_scores": [1]}]}, r"src\.json:example 1: target_scores")):
        j.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=msg):
            data.build(tmp_path / "out", source=j, n_train=10, teacher="explanation")
    j.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows[:3]) + ',\n"oops"\n]')
    with pytest.raises(InputError, match=r"src\.json:5: expected a JSON object, got a JSON string"):
        data.build(tmp_path / "out", source=j, n_train=10, teacher="explanation")
    assert not (tmp_path / "out").exists()
    # a UTF-8 BOM is accepted, in JSONL and JSON alike, and gives the same split
    src.write_bytes(b"\xef\xbb\xbf" + raw)
    m1 = data.build(tmp_path / "a", source=src, n_train=10, teacher="explanation")
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=1).encode())
    m2 = data.build(tmp_path / "b", source=j, n_train=10, teacher="explanation")
    assert [s["sha256"] for s in m1["splits"].values()] == [s["sha256"] for s in m2["splits"].values()]


def test_data_n_train_is_checked_before_anything_is_written(tmp_path):
    src = tmp_path / "src.jsonl"
    source(src)
    out = tmp_path / "out"
    data.build(out, source=src, n_train=10, teacher="explanation")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for n in (0, -1, 20, 25):
        with pytest.raises(InputError, match=rf"--n-train: {n} train questions: .* has 20 distinct questions, "
                                             r"so --n-train must be 1 to 19"):
            data.build(out, source=src, n_train=n, teacher="explanation")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # split files and MANIFEST untouched
    r = subprocess.run([sys.executable, "-m", "askdraft.cli", "data", "--source", str(src), "--out", str(out),
                        "--n-train", "0", "--teacher", "explanation"], capture_output=True, text=True)
    assert r.returncode == 2 and "error: --n-train: 0 train questions" in r.stderr and "Traceback" not in r.stderr


def test_sft_data_checks_leakage_into_train_baseline_too(tmp_path, tiny_llama_dir):
    src = tmp_path / "src.jsonl"
    source(src)
    out = tmp_path / "data"
    data.build(out, source=src, n_train=14, teacher="explanation")
    dev = records.read_split(out / data.FILES["dev"])
    base = out / data.FILES["baseline"]
    base.write_text(base.read_text() + json.dumps({"question": dev[2]["question"], "teacher_final": "yes"}) + "\n")
    with pytest.raises(InputError, match=rf"{data.FILES['dev']}:3: question also in .*{data.FILES['baseline']}:15"):
        sft_data.build(out, tiny_llama_dir)
    assert not (out / "sft").exists()
