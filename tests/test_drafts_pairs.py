"""Drafts (a tiny random Llama really generating) and the DPO pair builder (crafted drafts)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from askdraft import drafts, pairs, templates
from askdraft.io import InputError
from conftest import strategyqa_split

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def split_rows(n, offset=0):
    lines = (strategyqa_split() / "strategyqa_train_cot.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[offset:offset + n]]


# ---------------------------------------------------------------- drafts

def test_drafts_generate_resume_and_skip(tiny_llama_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train, dev = split_rows(5), split_rows(3, offset=100)
    write_jsonl(data / "strategyqa_train_cot.jsonl", train)
    write_jsonl(data / "strategyqa_dev.jsonl", dev)
    out = tmp_path / "drafts" / "tiny"
    out.mkdir(parents=True)
    # a run killed after two rows of train: both kept as written, the torn third line ignored
    done = [drafts.draft_row(r["question"], f"PRE {i}.\nTentative answer: yes", r["teacher_final"])
            for i, r in enumerate(train[:2])]
    (out / "train.jsonl.partial").write_text("".join(json.dumps(r) + "\n" for r in done) + '{"question": "Do')

    report = drafts.run(tiny_llama_dir, "tiny", data=data, out_root=tmp_path / "drafts",
                        batch_size=2, max_new_tokens=8)
    assert not (out / "train.jsonl.partial").exists() and not (out / "dev.jsonl.partial").exists()
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [r["question"] for r in train]  # split order
    assert rows[:2] == done
    for r, gold in zip(rows, train):
        assert list(r) == ["question", "draft", "tentative", "answer"]
        assert r["answer"] == gold["teacher_final"]
        assert r["tentative"] == (templates.parse_tentative(r["draft"]) or "unparsed")
        assert templates.DRAFT_STOP not in r["draft"] and r["draft"] == r["draft"].strip()
    assert all(not r["draft"].startswith("PRE") for r in rows[2:])  # generated, not copied
    assert report["train"]["n"] == 5 and report["dev"]["n"] == 3 and not report["train"]["skipped"]
    assert report["train"]["tentative_accuracy"] == pytest.approx(
        sum(r["tentative"] == r["answer"] for r in rows) / 5, abs=1e-4)
    assert json.loads((out / "REPORT.json").read_text())["splits"]["train"]["n"] == 5

    # a finished split is skipped: the file is not rewritten
    stamp = {s: ((out / f"{s}.jsonl").read_bytes(), (out / f"{s}.jsonl").stat().st_mtime_ns) for s in ("train", "dev")}
    again = drafts.run(tiny_llama_dir, "tiny", data=data, out_root=tmp_path / "drafts", batch_size=2, max_new_tokens=8)
    assert again["train"]["skipped"] and again["dev"]["skipped"]
    assert again["train"]["n"] == 5
    assert stamp == {s: ((out / f"{s}.jsonl").read_bytes(), (out / f"{s}.jsonl").stat().st_mtime_ns)
                     for s in ("train", "dev")}


def test_draft_rows_and_counts():
    rows = [drafts.draft_row("a", "x?\nTentative answer: Yes", "yes"),
            drafts.draft_row("b", "y?\nTentative answer: no", "yes"),
            drafts.draft_row("c", "no conclusion", "no"),
            drafts.draft_row("d", "", "no")]
    assert [r["tentative"] for r in rows] == ["yes", "no", "unparsed", "unparsed"]
    assert drafts.counts(rows) == {"n": 4, "unparsed": 2, "no_conclusion": 0, "empty": 1, "tentative_accuracy": 0.25}


def test_drafts_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(InputError, match="nope: model directory not found"):
        drafts.run(tmp_path / "nope", "x", data=tmp_path)
    (tmp_path / "strategyqa_dev.jsonl").write_text('{"question": "Q?", "teacher_final": "maybe"}\n')
    with pytest.raises(InputError, match=r"strategyqa_dev.jsonl:1: teacher_final 'maybe' is not yes/no"):
        drafts.run(tiny_llama_dir, "x", splits=["dev"], data=tmp_path, out_root=tmp_path / "o")
    # a partial file with a malformed line in the middle is not silently dropped
    write_jsonl(tmp_path / "strategyqa_dev.jsonl", split_rows(2))
    (tmp_path / "o" / "x").mkdir(parents=True)
    (tmp_path / "o" / "x" / "dev.jsonl.partial").write_text("{oops\n{}\n")
    with pytest.raises(InputError, match=r"dev.jsonl.partial:1: malformed JSON"):
        drafts.run(tiny_llama_dir, "x", splits=["dev"], data=tmp_path, out_root=tmp_path / "o")


# ---------------------------------------------------------------- pairs

Q = ["Is the sky blue?", "Can a cat fly?", "Do fish sing?", "Is ice cold?", "Are owls birds?"]
GOLD = ["yes", "no", "no", "yes", "yes"]
DRAFTS = ["What colour is the sky? Blue.\nTentative answer: yes",  # right -> flipped
          "Do cats have wings? No.\nTentative answer: yes",        # wrong -> the draft itself
          "Fish make sounds. Hmm.",                                 # unparsed
          "Is ice frozen water? Yes.\nTentative answer: NO",       # wrong (case-insensitive)
          "Do owls have feathers? Yes. Tentative answer: yes"]     # right -> flipped


@pytest.fixture
def files(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"question": q, "teacher_cot": "c", "teacher_final": a}
                                                 for q, a in zip(Q, GOLD)])
    d = write_jsonl(tmp_path / "drafts.jsonl", [drafts.draft_row(q, t, a) for q, t, a in zip(Q, DRAFTS, GOLD)])
    return d, gold


def test_pairs_flip_rule(files, tmp_path):
    d, gold = files
    report = pairs.run(d, gold, tmp_path / "pairs.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [Q[0], Q[1], Q[3], Q[4]]
    assert rows[0] == {
        "prompt": f"Question: {Q[0]} Student draft: {DRAFTS[0]}\nFinal answer:", "chosen": " yes",
        "rejected": " What colour is the sky? Blue.\nTentative answer: no", "flipped": True, "mode": "draft",
        "question": Q[0], "student_tentative": "yes", "gold": "yes"}
    assert rows[1]["rejected"] == " " + DRAFTS[1] and not rows[1]["flipped"] and rows[1]["chosen"] == " no"
    assert rows[2]["rejected"] == " " + DRAFTS[3] and not rows[2]["flipped"] and rows[2]["student_tentative"] == "no"
    assert rows[3]["rejected"] == " Do owls have feathers? Yes. Tentative answer: no" and rows[3]["flipped"]
    assert all(r["prompt"] == templates.answer_prompt(r["question"], DRAFTS[Q.index(r["question"])]) for r in rows)
    assert {k: report[k] for k in ("drafts_in", "pairs", "flipped", "flip_share", "unparsed_drafts")} == {
        "drafts_in": 5, "pairs": 4, "flipped": 2, "flip_share": 0.5, "unparsed_drafts": 1}
    assert report["dropped"] == {"empty_draft": 0, "unparsed": 1, "too_long": 0}
    assert report["student_tentative_accuracy"] == 0.4
    on_disk = json.loads((tmp_path / "pairs.report.json").read_text())
    assert on_disk["pairs"] == 4 and on_disk["out_sha256"]


def test_pairs_answer_mode_keeps_unparsed(files, tmp_path):
    d, gold = files
    report = pairs.run(d, gold, tmp_path / "a.jsonl", mode="answer")
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and report["dropped"]["unparsed"] == 0
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" " + g, " no" if g == "yes" else " yes") for g in GOLD]
    assert [r["flipped"] for r in rows] == [True, False, False, False, True]
    assert rows[2]["student_tentative"] == "unparsed" and DRAFTS[2] in rows[2]["prompt"]


def test_pairs_deterministic_bytes(files, tmp_path):
    d, gold = files
    pairs.run(d, gold, tmp_path / "one.jsonl")
    first = (tmp_path / "one.jsonl").read_bytes(), (tmp_path / "one.report.json").read_bytes()
    pairs.run(d, gold, tmp_path / "one.jsonl")
    assert ((tmp_path / "one.jsonl").read_bytes(), (tmp_path / "one.report.json").read_bytes()) == first
    pairs.run(d, gold, tmp_path / "two.jsonl")
    assert (tmp_path / "two.jsonl").read_bytes() == first[0]


def test_pairs_length_limit_and_empty(files, tiny_llama_dir, tmp_path):
    d, gold = files
    long = drafts.draft_row(Q[1], "Why? " * 200 + "\nTentative answer: yes", "no")
    lines = d.read_text().splitlines()
    lines[1] = json.dumps(long)
    lines[2] = json.dumps({"question": Q[2], "draft": " "})
    d.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"drafts.jsonl:3: empty draft"):
        pairs.build(d, gold)
    pairs_, report = pairs.build(d, gold, tokenizer=tiny_llama_dir, max_len=254, allow_empty=True)
    assert report["dropped"] == {"empty_draft": 1, "unparsed": 0, "too_long": 1}
    assert [p["question"] for p in pairs_] == [Q[0], Q[3], Q[4]]
    assert 0 < report["longest_pair_tokens"] and report["max_len"] == 254


@pytest.mark.parametrize("which, line, content, msg", [
    ("drafts", 2, "{not json", "malformed JSON"),
    ("drafts", 1, {"question": Q[0]}, r"missing field 'draft'"),
    ("drafts", 2, {"question": Q[1], "draft": ""}, "empty draft"),
    ("drafts", 3, {"question": Q[2], "draft": "d", "answer": "true"}, "answer 'true' is not yes/no"),
    ("drafts", 3, {"question": Q[2], "draft": "d", "answer": "yes"}, "answer 'yes' disagrees with"),
    ("drafts", 4, {"question": "Who?", "draft": "d"}, "question not found in the gold file"),
    ("drafts", 5, {"question": Q[0], "draft": "d"}, "duplicate question"),
    ("drafts", 1, {"question": Q[0], "draft": None}, "field 'draft' must be a string, got a JSON null"),
    ("drafts", 1, {"question": 7, "draft": "d"}, "field 'question' must be a string, got a JSON number"),
    ("gold", 3, {"question": Q[2], "teacher_final": "maybe"}, "teacher_final 'maybe' is not yes/no"),
    ("gold", 2, {"question": Q[1]}, r"missing field 'teacher_final'"),
    ("gold", 2, {"question": Q[0], "teacher_final": "yes"}, r"duplicate question \(first at line 1\)"),
])
def test_pairs_bad_input(files, tmp_path, which, line, content, msg):
    d, gold = files
    path = d if which == "drafts" else gold
    lines = path.read_text().splitlines()
    lines[line - 1] = content if isinstance(content, str) else json.dumps(content)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "pairs.jsonl"
    with pytest.raises(InputError, match=rf"{path.name}:{line}: {msg}"):
        pairs.run(d, gold, out)
    assert pairs.main(["--drafts", str(d), "--gold", str(gold), "-o", str(out)]) == 2
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing written, no temp files


def test_build_dpo_pairs_script_exit_codes(files, tmp_path):
    d, gold = files
    out = tmp_path / "p.jsonl"
    cmd = [sys.executable, str(REPO / "tools/build_dpo_pairs.py"), "--drafts", str(d), "--gold", str(gold), "-o", str(out)]
    ok = subprocess.run(cmd + ["--mode", "answer"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "5 pairs (answer mode)" in ok.stdout and len(out.read_text().splitlines()) == 5
    out.unlink()
    d.write_text(d.read_text() + '{"question": "Who?", "draft": "d"}\n')
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and f"{d}:6: question not found" in bad.stderr
    assert not out.exists()


def test_continuous_batching_writes_generates_drafts(tiny_llama_dir, tmp_path, one_thread):
    """--engine continuous (transformers' generate_batch, paged KV cache, no stop strings): the
    same greedy drafts as padded model.generate, with or without --cuda-graphs (off on a CPU), and
    REPORT.json records the engine, speed.json each split's generation speed."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "strategyqa_dev.jsonl", split_rows(5, offset=200))
    runs = {"generate": {}, "continuous": {"cache_tokens": 256},
            "continuous-graphs": {"engine": "continuous", "cache_tokens": 256, "cuda_graphs": True}}
    files = {}
    for name, settings in runs.items():
        settings = {"engine": name, **settings}
        drafts.run(tiny_llama_dir, name, splits=["dev"], data=data, out_root=tmp_path / "drafts", batch_size=3,
                   max_new_tokens=6, **settings)
        files[name] = (tmp_path / "drafts" / name / "dev.jsonl").read_text()
        report = json.loads((tmp_path / "drafts" / name / "REPORT.json").read_text())
        assert report["generation"]["engine"] == settings["engine"]
        speed = json.loads((tmp_path / "drafts" / name / drafts.SPEED_FILE).read_text())["dev"]
        assert speed["generated"] == 5 and 5 <= speed["new_tokens"] <= 30 and speed["new_tokens_per_s"] > 0
    # 5 drafts in calls of 3 and 2: the second call reuses the first one's manager
    assert files["continuous"] == files["generate"] == files["continuous-graphs"]
    assert len(files["generate"].splitlines()) == 5

    model, tok = drafts.load_model(tiny_llama_dir, device="cpu")
    counts = []
    texts = drafts.generate_continuous(model, tok, ["Is water wet?", "Can a dog fly?"], max_new_tokens=4,
                                       cache_tokens=64, token_counts=counts)
    assert len(texts) == 2 and len(counts) == 2 and all(1 <= n <= 4 for n in counts)
    assert model._cached_continuous_batching_manager is not None  # kept for the next call
    drafts.release_continuous(model)
    assert getattr(model, "_cached_continuous_batching_manager", None) is None
    drafts.release_continuous(model)  # nothing left: a no-op
