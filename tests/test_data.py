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
    m = data.build(tmp_path / "out", source=tmp_path / "src.jsonl", n_train=45)
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
        data.build(tmp_path / out, source=tmp_path / "src.jsonl", n_train=40)
    for name in [*data.FILES.values(), "MANIFEST.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "Broken?", "answer": "yes"', "malformed JSON"),
    ('{"question": "No answer?", "rationale": "r"}', "missing field"),
    ('{"question": "Maybe?", "answer": "maybe", "rationale": "r"}', "is not yes/no"),
    ('{"question": "Is thing number 4 a red thing?", "answer": "no", "rationale": "other"}', "duplicate question"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, bad_line, message):
    write_source(tmp_path / "src.jsonl", n=60, extra=[bad_line])
    r = askdraft("data", "--source", str(tmp_path / "src.jsonl"), "--out", str(tmp_path / "out"), "--n-train", "40", cwd=tmp_path)
    assert r.returncode != 0
    assert "src.jsonl:61: " in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_dev_overlap_is_refused(tmp_path):
    write_source(tmp_path / "src.jsonl")
    data.build(tmp_path / "out", source=tmp_path / "src.jsonl", n_train=40)
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
    """The default source: StrategyQA inside bigbench==1.0.0 (downloaded once into the cache)."""
    m = data.build(tmp_path / "a", hub=False)
    assert m["n_source"] == 2290 and m["exact_duplicates_merged"] == 1
    dev = m["splits"][data.FILES["dev"]]
    assert m["splits"][data.FILES["cot"]]["rows"] == 2000 and dev["rows"] == 289
    assert abs(dev["yes_share"] - 1070 / 2289) < 0.005
    m2 = data.build(tmp_path / "b", hub=False)
    assert {k: v["sha256"] for k, v in m["splits"].items()} == {k: v["sha256"] for k, v in m2["splits"].items()}


def test_shorten_rationale_keeps_answer():
    class Words:  # a whitespace "tokenizer": one token per word
        def __call__(self, text, add_special_tokens=False):
            return type("E", (), {"input_ids": text.split()})
    rationale = " ".join(f"w{i}" for i in range(50))
    short, cut = sft_data.shorten_rationale(Words(), "Is it?", rationale, "yes", 30, "", "")
    assert cut and rationale.startswith(short) and len(short.split()) < 50
    full = sft_data.row(sft_data.templates.draft_prompt("Is it?"), sft_data.templates.draft_completion(short, "yes"), "", "")
    n = sum(len(s["text"].split()) for s in full["segments"])
    assert n <= 30 and full["segments"][1]["text"].endswith("Final answer: yes")
