"""The data tool: deterministic, stratified, leak-free splits; clear errors on bad input."""
import json
import subprocess
import sys

import pytest

from askdraft import data, sft_data
from askdraft.io import InputError


def write_source(path, n=60, yes_every=2, extra=None):
    rows = [{"question": f"Is thing number {i} a {'red' if i % 3 else 'blue'} thing?",
             "answer": "yes" if i % yes_every == 0 else "no",
             "rationale": f"Thing {i} is {'red' if i % 3 else 'blue'}. Colours matter."} for i in range(n)]
    lines = [json.dumps(r) for r in rows] + (extra or [])
    path.write_text("\n".join(lines) + "\n")
    return rows


def askdraft(*args, cwd):
    return subprocess.run([sys.executable, "-m", "askdraft.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_split_counts_stratified_and_leak_free(tmp_path):
    write_source(tmp_path / "src.jsonl", n=60, yes_every=3)
    m = data.build(tmp_path / "out", source=tmp_path / "src.jsonl", n_train=45, teacher="explanation")
    splits = m["splits"]
    assert splits[data.FILES["baseline"]]["rows"] == 45 and splits[data.FILES["dev"]]["rows"] == 15
    assert splits[data.FILES["dev"]]["yes"] == round(15 * 20 / 60)  # 20 of 60 are yes
    train = [json.loads(line) for line in (tmp_path / "out" / data.FILES["cot"]).read_text().splitlines()]
    dev = [json.loads(line) for line in (tmp_path / "out" / data.FILES["dev"]).read_text().splitlines()]
    assert not {r["question"] for r in train} & {r["question"] for r in dev}
    assert set(train[0]) == {"question", "teacher_cot", "teacher_final"}
    base = [json.loads(line) for line in (tmp_path / "out" / data.FILES["baseline"]).read_text().splitlines()]
    assert set(base[0]) == {"question", "teacher_final"}
    assert [r["question"] for r in base] == [r["question"] for r in train]


def test_two_runs_are_byte_identical(tmp_path):
    write_source(tmp_path / "src.jsonl")
    for out in ("a", "b"):
        data.build(tmp_path / out, source=tmp_path / "src.jsonl", n_train=40, teacher="explanation")
    for name in [data.FILES[k] for k in ("baseline", "cot", "dev")] + ["MANIFEST.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "Broken?", "answer": "yes"', "malformed JSON"),
    ('{"question": "No answer?", "rationale": "r"}', "missing field"),
    ('{"question": "Maybe?", "answer": "maybe", "rationale": "r"}', "is not yes/no"),
    ('{"question": "Is thing number 4 a red thing?", "answer": "no", "rationale": "other"}', "duplicate question"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, bad_line, message):
    write_source(tmp_path / "src.jsonl", n=60, extra=[bad_line])
    r = askdraft("data", "--source", str(tmp_path / "src.jsonl"), "--out", str(tmp_path / "out"), "--n-train", "40",
                 "--teacher", "explanation", cwd=tmp_path)
    assert r.returncode != 0
    assert "src.jsonl:61: " in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_dev_overlap_is_refused(tmp_path):
    write_source(tmp_path / "src.jsonl")
    data.build(tmp_path / "out", source=tmp_path / "src.jsonl", n_train=40, teacher="explanation")
    dev = tmp_path / "out" / data.FILES["dev"]
    train_first = (tmp_path / "out" / data.FILES["cot"]).read_text().splitlines()[0]
    dev.write_text(dev.read_text() + train_first + "\n")
    n_dev = len(dev.read_text().splitlines())
    with pytest.raises(InputError, match=rf"strategyqa_dev.jsonl:{n_dev}: question also in .*strategyqa_train_cot.jsonl:1"):
        data.check_no_leak(tmp_path / "out" / data.FILES["cot"], dev)
    # the training-data renderer refuses leaked files before writing anything
    r = askdraft("sft-data", "--data", str(tmp_path / "out"), "--base", str(tmp_path / "nomodel"), cwd=tmp_path)
    assert r.returncode != 0 and "nomodel" in r.stderr


def test_embedded_bigbench_source(tmp_path):
    """The default source: bigbench==1.0.0's StrategyQA task file, committed in data/strategyqa/."""
    m = data.build(tmp_path / "a", hub=False)
    assert m["n_source"] == 2290 and m["exact_duplicates_merged"] == 1
    dev = m["splits"][data.FILES["dev"]]
    assert m["splits"][data.FILES["cot"]]["rows"] == 2000 and dev["rows"] == 289
    assert abs(dev["yes_share"] - 1070 / 2289) < 0.005
    m2 = data.build(tmp_path / "b", hub=False)
    assert {k: v["sha256"] for k, v in m["splits"].items()} == {k: v["sha256"] for k, v in m2["splits"].items()}


def test_bigbench_task_file_is_checked(tmp_path):
    """A task file that is not bigbench 1.0.0's (edited, truncated) is refused, naming it."""
    bad = tmp_path / "task.json"
    bad.write_bytes(data.BIGBENCH_TASK.read_bytes().replace(b"Yes.", b"No.", 1))
    with pytest.raises(InputError, match=f"{bad}.*not bigbench 1.0.0's StrategyQA task.json"):
        data.load_bigbench(bad)
    records, path = data.load_bigbench()
    assert len(records) == 2290 and path == data.BIGBENCH_TASK


def count_words(text):  # a whitespace "tokenizer": one token per word
    return len(text.split())


def test_shorten_rationale_keeps_answer():
    rationale = " ".join(f"w{i}" for i in range(50))
    short, cut = sft_data.shorten_rationale(count_words, "Is it?", rationale, "yes", 30, "", "")
    assert cut and rationale.startswith(short) and len(short.split()) < 50
    full = sft_data.row(sft_data.templates.draft_prompt("Is it?"), sft_data.templates.draft_completion(short, "yes"), "", "")
    n = sum(len(s["text"].split()) for s in full["segments"])
    assert n <= 30 and full["segments"][1]["text"].endswith("Final answer: yes")


# ---------------------------------------------------------------- the teacher draft: decompositions

def test_embedded_split_has_question_drafts_from_decompositions(tmp_path):
    from askdraft import templates
    m = data.build(tmp_path / "a", hub=False)
    assert m["teacher"] == "decomposition" and m["decompositions_sha256"]
    table = data.load_decompositions()
    for name in ("cot", "dev"):
        rows = [json.loads(line) for line in (tmp_path / "a" / data.FILES[name]).read_text().splitlines()]
        for r in rows:
            d = table[data.norm_question(r["question"])]
            assert [s["q"] for s in r["teacher_steps"]] == [q.strip() for q in d["decomposition"]]
            assert sorted(" ".join(s["a"] for s in r["teacher_steps"]).split()) == sorted(" ".join(f.strip() for f in d["facts"]).split())
            assert r["teacher_cot"] == templates.teacher_draft(r["teacher_steps"])
            assert r["teacher_cot"].count("Q: ") == len(d["decomposition"]) and r["teacher_final"] == d["answer"]
    # the explanation form stays selectable, and says so in the manifest
    m2 = data.build(tmp_path / "b", hub=False, teacher="explanation")
    assert m2["teacher"] == "explanation" and m2["decompositions"] is None
    row = json.loads((tmp_path / "b" / data.FILES["dev"]).read_text().splitlines()[0])
    assert "teacher_steps" not in row and "Q: " not in row["teacher_cot"]


def test_teacher_steps_match_facts_to_the_sub_questions_they_answer():
    steps = data.teacher_steps(
        ["Who can perform lawful arrests?", "Are members of The Police also #1?"],
        ["The members of The Police were musicians, not law enforcement officers.",
         "Only law enforcement officers can perform lawful arrests."])
    assert steps == [
        {"q": "Who can perform lawful arrests?", "a": "Only law enforcement officers can perform lawful arrests."},
        {"q": "Are members of The Police also #1?",
         "a": "The members of The Police were musicians, not law enforcement officers."}]
    # no shared word: facts go by position; an operation step no fact matches keeps no answer
    steps = data.teacher_steps(["How many kids did Caesar have?", "How many did Genghis have?", "Is #2 more than #1?"],
                               ["Three.", "Sixteen."])
    assert [s["a"] for s in steps] == ["Three.", "Sixteen.", ""]


def test_unmatched_question_or_malformed_decomposition_is_an_error(tmp_path):
    src = tmp_path / "src.jsonl"
    write_source(src, n=20)
    r = askdraft("data", "--source", str(src), "--out", str(tmp_path / "out"), "--n-train", "15", cwd=tmp_path)
    assert r.returncode == 2 and "decompositions.jsonl: no decomposition for question 'Is thing number 0 a blue thing?'" in r.stderr
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "dec.jsonl"
    bad.write_text(data.DECOMPOSITIONS.read_text().splitlines()[0] + "\n"
                   + json.dumps({"question": "Q?", "answer": "yes", "decomposition": ["x?"], "facts": "not a list"}) + "\n")
    with pytest.raises(InputError, match=r"dec.jsonl:2: field 'facts' must be a non-empty list"):
        data.load_decompositions(bad)
    bad.write_text(json.dumps({"question": "Q?", "answer": "maybe", "decomposition": ["x?"], "facts": ["f"]}) + "\n")
    with pytest.raises(InputError, match=r"dec.jsonl:1: label 'maybe' is not yes/no"):
        data.load_decompositions(bad)


def test_kfold_split_covers_every_question_once_with_a_validation_split(tmp_path):
    questions, yes = {}, []
    for f in range(5):
        m = data.build(tmp_path / str(f), hub=False, folds=5, fold=f, val_frac=0.1)
        rows = {k: [json.loads(x) for x in (tmp_path / str(f) / data.FILES[k]).read_text().splitlines()]
                for k in ("cot", "dev", "val")}
        sets = {k: {r["question"] for r in v} for k, v in rows.items()}
        assert not sets["cot"] & sets["dev"] and not sets["cot"] & sets["val"] and not sets["dev"] & sets["val"]
        assert len(sets["cot"]) + len(sets["dev"]) + len(sets["val"]) == 2289
        assert abs(m["splits"][data.FILES["val"]]["rows"] - 0.1 * (2289 - len(sets["dev"]))) <= 1
        for q in sets["dev"]:
            assert q not in questions
            questions[q] = f
        yes.append(m["splits"][data.FILES["dev"]]["yes_share"])
    assert len(questions) == 2289 and max(yes) - min(yes) < 0.01  # stratified
    with pytest.raises(InputError, match="fold 5 is not in 0..4"):
        data.build(tmp_path / "x", hub=False, folds=5, fold=5)


def test_shorten_steps_cuts_answers_never_sub_questions():
    steps = [{"q": "What is one?", "a": " ".join(f"a{i}" for i in range(20))},
             {"q": "What is two?", "a": " ".join(f"b{i}" for i in range(20))}, {"q": "Is #1 #2?", "a": ""}]
    text, cut = sft_data.shorten_steps(count_words, "Is it?", steps, "no", 40, "", "")
    assert cut and all(f"Q: {s['q']}" in text for s in steps)
    assert "a0" in text and "b0" in text and "a19" not in text
    full = sft_data.row(sft_data.templates.draft_prompt("Is it?"), sft_data.templates.draft_completion(text, "no"), "", "")
    assert sum(len(s["text"].split()) for s in full["segments"]) <= 40
    assert full["segments"][1]["text"].endswith("Tentative answer: no\nFinal answer: no")
