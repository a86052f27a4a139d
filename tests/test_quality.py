"""Question quality (askdraft.quality) end to end on a toy store, and phase C's quality pairs
(askdraft.pairs --mode quality): ordering, tie / near-tie drop, the train-only store, determinism."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from askdraft import pairs, quality, templates
from askdraft.io import InputError
from askdraft.records import read_pairs
from askdraft.retrieval import FactStore
from test_retrieval import TOY, write_toy

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def draft(*questions, tentative="no"):
    return templates.draft_text(templates.teacher_draft([{"q": q, "a": "x"} for q in questions]), tentative)


DRAFTS = [
    {"question": TOY[0]["question"], "draft": draft("Where do penguins live?", "Is the north pole in the Arctic?")},
    {"question": TOY[1]["question"], "draft": draft("How tall is a giraffe?")},
    {"question": TOY[2]["question"], "draft": "Tentative answer: yes"},  # asks nothing: 0
]


def cli(*args):
    env = {"PYTHONPATH": f"{REPO / 'tools'}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "askdraft.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env)


def test_question_quality_cli_end_to_end(tmp_path):
    toy = write_toy(tmp_path / "decompositions.jsonl")
    drafts = write_jsonl(tmp_path / "dev.jsonl", DRAFTS)
    out = tmp_path / "results" / "question_quality.json"
    r = cli("question-quality", "--drafts", drafts, "--decompositions", toy, "--k", 2, "-o", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    store = FactStore.build(toy)
    assert res["k"] == 2 and res["n"] == 3 and res["store"] == store.describe()
    assert res["drafts_without_subquestions"] == 1
    for row, d in zip(res["per_question"], DRAFTS):
        q = d["question"]
        assert row["question"] == q and row["n_gold_facts"] == len(store.gold(q))
        assert row["recall"]["question"] == store.recall(q, [q], 2)
        assert row["recall"]["gold_decomposition"] == store.recall(q, store.decomposition(q), 2)
        asked = templates.draft_questions(d["draft"])
        assert row["recall"]["draft"] == (store.recall(q, asked, 2) if asked else 0.0)
    # hand-checked: both penguin facts found by the two sub-questions; "tall" finds two giraffe facts of three
    assert [row["recall"]["draft"] for row in res["per_question"]] == [1.0, pytest.approx(2 / 3), 0.0]
    vec = {s: [row["recall"][s] for row in res["per_question"]] for s in quality.QUERY_SETS}
    for s in quality.QUERY_SETS:
        assert res["recall"][s]["mean"] == pytest.approx(sum(vec[s]) / 3)
        assert res["recall"][s]["ci_low"] <= res["recall"][s]["mean"] <= res["recall"][s]["ci_high"]
    d = res["differences"]["draft - question"]
    diffs = [a - b for a, b in zip(vec["draft"], vec["question"])]
    assert d["diff"] == pytest.approx(sum(diffs) / 3)
    assert (d["better"], d["worse"], d["equal"]) == (sum(x > 0 for x in diffs), sum(x < 0 for x in diffs),
                                                      sum(x == 0 for x in diffs))
    assert "recall@2" in r.stdout and "draft - question" in r.stdout


@pytest.mark.parametrize("content, msg", [
    ({"question": "Is this question unknown?", "draft": "Q: what?"}, "holds no facts of question"),
    ('{"question": "x", "draft": ', "malformed JSON"),
    ({"question": TOY[0]["question"]}, "missing field 'draft'"),
])
def test_question_quality_bad_input(tmp_path, content, msg):
    toy = write_toy(tmp_path / "decompositions.jsonl")
    drafts = write_jsonl(tmp_path / "dev.jsonl", [DRAFTS[0], content])
    out = tmp_path / "q.json"
    r = cli("question-quality", "--drafts", drafts, "--decompositions", toy, "-o", out)
    assert r.returncode == 2 and f"{drafts}:2" in r.stderr and msg in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".q.json*"))


def test_question_quality_store_split_and_default_out(tmp_path):
    toy = write_toy(tmp_path / "decompositions.jsonl")
    split = write_jsonl(tmp_path / "train.jsonl", [{"question": r["question"], "teacher_final": r["answer"]}
                                                   for r in TOY[:2]])
    drafts = write_jsonl(tmp_path / "train_drafts.jsonl", DRAFTS[:2])
    res = quality.run(drafts, k=2, decompositions=toy, store_split=split)
    assert res["store"]["n_questions"] == 2 and res["store"]["questions"] == str(split)
    assert (tmp_path / "train_drafts.question_quality.json").is_file()
    with pytest.raises(InputError, match="holds no facts"):  # a question outside the split
        quality.run(write_jsonl(tmp_path / "d.jsonl", DRAFTS), k=2, decompositions=toy, store_split=split)


# ---------------------------------------------------------------- quality pairs

PAIR_TOY = [
    {"question": "Do cats like milk?", "answer": "no", "decomposition": ["Are cats lactose intolerant?"],
     "facts": ["Adult cats are lactose intolerant.", "Milk contains lactose sugar."]},
    {"question": "Is a tomato a fruit?", "answer": "yes",
     "decomposition": ["What is a fruit?", "Does a tomato grow from a flower?"],
     "facts": ["A fruit grows from the flower of a plant.", "Tomatoes grow from tomato flowers.",
               "Tomatoes are red when ripe."]},
    {"question": "Can a dog climb trees?", "answer": "no", "decomposition": ["Can dogs climb?"],
     "facts": ["Dogs have claws that cannot grip bark.", "Climbing trees requires gripping bark."]},
    # not a training question: its fact would outscore the cats' gold facts if the store held it
    {"question": "Do cartoon cats drink milk?", "answer": "yes", "decomposition": ["Do cartoon cats drink milk?"],
     "facts": ["Cartoon cats drink milk, milk and more milk."]},
]


@pytest.fixture
def pair_files(tmp_path):
    toy = write_toy(tmp_path / "decompositions.jsonl", PAIR_TOY)
    gold = write_jsonl(tmp_path / "strategyqa_train_cot.jsonl",
                       [{"question": r["question"], "teacher_final": r["answer"]} for r in PAIR_TOY[:3]])
    first = write_jsonl(tmp_path / "s2.jsonl", [
        {"question": PAIR_TOY[0]["question"], "draft": draft("Do cats drink milk?")},
        {"question": PAIR_TOY[1]["question"], "draft": draft("What is a fruit?", "Do tomatoes grow from flowers?")},
        {"question": PAIR_TOY[2]["question"], "draft": draft("Can dogs grip bark?")},
    ])
    second = write_jsonl(tmp_path / "s3.jsonl", [
        {"question": PAIR_TOY[0]["question"], "draft": draft("Is milk sugar lactose?")},
        {"question": PAIR_TOY[1]["question"], "draft": draft("What colour is the sky?")},  # finds nothing
        {"question": PAIR_TOY[2]["question"], "draft": draft("Can dogs grip bark?")},  # identical: dropped
    ])
    return toy, gold, first, second


def quality_pairs(pair_files, margin=0.2, swap=False, k=1):
    toy, gold, first, second = pair_files
    a, b = (second, first) if swap else (first, second)
    return pairs.build(a, gold, mode="quality", drafts_2=b, margin=margin, k=k, decompositions=toy)


def test_quality_pairs_order_and_drop(pair_files):
    toy, gold, first, second = pair_files
    store = FactStore.for_split(gold, toy)
    out, report = quality_pairs(pair_files, k=2)
    by_q = {p["question"]: p for p in out}
    # every kept pair: chosen is the draft with the higher score, the margin is met
    for p in out:
        rc, rr = (quality.draft_recall(store, p["question"], p[s].strip(), 2)[0] for s in ("chosen", "rejected"))
        assert rc - rr >= 0.2 - 1e-9 and (p["chosen_recall"], p["rejected_recall"]) == pytest.approx((rc, rr))
        assert p["prompt"] == templates.draft_prompt(p["question"]) == f"Question: {p['question']}\nDraft:"
        assert p["chosen"].startswith(" ") and p["rejected"].startswith(" ") and p["mode"] == "quality"
    tomato = by_q[PAIR_TOY[1]["question"]]  # two sub-questions find 2 of 3 facts, the sky question none
    assert tomato["chosen"] == " " + draft("What is a fruit?", "Do tomatoes grow from flowers?")
    assert tomato["chosen_from"] == 1 and tomato["chosen_recall"] == pytest.approx(2 / 3)
    assert tomato["rejected"] == " " + draft("What colour is the sky?") and tomato["rejected_recall"] == 0
    assert PAIR_TOY[2]["question"] not in by_q and report["dropped"]["identical"] == 1
    assert report["rule"]["margin"] == 0.2 and report["rule"]["k"] == 2
    assert report["pairs"] == len(out) and report["questions_scored"] == 3
    # at k=1 the tomato's difference is 1/3: kept at margin 0.2, a near-tie at 0.5 (then nothing is left)
    assert PAIR_TOY[1]["question"] in {p["question"] for p in quality_pairs(pair_files, k=1)[0]}
    with pytest.raises(InputError, match="no quality pairs left .*'near_tie': 1"):
        quality_pairs(pair_files, margin=0.5, k=1)


@pytest.mark.parametrize("r1, r2, margin, expect", [
    (0.5, 0.5, 0.2, "tie"), (0.5, 0.25, 0.3, "near_tie"), (0.6, 0.4, 0.2, 1),  # 0.6 - 0.4 < 0.2 in floats
    (1 / 3, 2 / 3, 0.2, 2), (0.0, 0.25, 0.0, 2), (0.4, 0.4, 0.0, "tie"),
])
def test_quality_pair_rule(r1, r2, margin, expect):
    pair, reason = pairs.quality_pair("Q?", "yes", ("draft one", r1), ("draft two", r2), margin)
    if isinstance(expect, str):
        assert pair is None and reason == expect
    else:
        assert reason is None and pair["chosen_from"] == expect
        assert pair["chosen"] == " draft one" if expect == 1 else pair["chosen"] == " draft two"
        assert pair["chosen_recall"] > pair["rejected_recall"]
    assert pairs.quality_pair("Q?", "no", ("same", 1.0), ("same", 0.0), 0.2) == (None, "identical")


def test_quality_pairs_use_training_facts_only(pair_files):
    toy, gold, first, second = pair_files
    full, train = FactStore.build(toy), FactStore.for_split(gold, toy)
    cats = PAIR_TOY[0]["question"]
    # with every question's facts, the cartoon fact takes the one slot of "Do cats drink milk?"
    assert full.search(["Do cats drink milk?"], k=1) == ["Cartoon cats drink milk, milk and more milk."]
    assert train.search(["Do cats drink milk?"], k=1) != full.search(["Do cats drink milk?"], k=1)
    out, report = quality_pairs(pair_files, k=1)
    assert report["rule"]["store"] == train.describe() and report["rule"]["store"]["n_questions"] == 3
    assert all("Cartoon" not in f for f in train.facts)
    one = quality.draft_recall(train, cats, draft("Do cats drink milk?"), 1)[0]
    two = quality.draft_recall(train, cats, draft("Is milk sugar lactose?"), 1)[0]
    assert one == two == 0.5  # each finds one of the two facts in the train-only store: a tie
    assert cats not in {p["question"] for p in out} and report["dropped"]["tie"] >= 1
    assert quality.draft_recall(full, cats, draft("Do cats drink milk?"), 1)[0] == 0.0  # what a full store says


def test_quality_pairs_deterministic_and_symmetric(pair_files, tmp_path):
    a, _ = quality_pairs(pair_files, k=2)
    b, _ = quality_pairs(pair_files, k=2, swap=True)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in a] == [(p["prompt"], p["chosen"], p["rejected"]) for p in b]
    assert [p["chosen_from"] for p in a] == [3 - p["chosen_from"] for p in b]
    toy, gold, first, second = pair_files
    outs = []
    for name in ("p1.jsonl", "p2.jsonl"):
        pairs.run(first, gold, tmp_path / name, mode="quality", drafts_2=second, k=2, decompositions=toy)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert len(read_pairs(tmp_path / "p1.jsonl")) == len(a)  # what phase C reads accepts them
    rep = json.loads((tmp_path / "p1.report.json").read_text())
    assert rep["mode"] == "quality" and rep["drafts_2"] == str(second) and len(rep["drafts_2_sha256"]) == 64


def test_quality_pairs_bad_input(pair_files, tmp_path):
    toy, gold, first, second = pair_files
    with pytest.raises(InputError, match="--drafts-2"):
        pairs.build(first, gold, mode="quality", decompositions=toy)
    with pytest.raises(InputError, match="for --mode quality"):
        pairs.build(first, gold, mode="draft", drafts_2=second)
    with pytest.raises(InputError, match="between 0 and 1"):
        pairs.build(first, gold, mode="quality", drafts_2=second, margin=2, decompositions=toy)
    empty = write_jsonl(tmp_path / "e.jsonl", [{"question": PAIR_TOY[0]["question"], "draft": ""}])
    with pytest.raises(InputError, match=f"{empty}:1: empty draft"):
        pairs.build(first, gold, mode="quality", drafts_2=empty, decompositions=toy)
    short = write_jsonl(tmp_path / "short.jsonl", [{"question": PAIR_TOY[1]["question"], "draft": draft("Fruit?")},
                                                   {"question": PAIR_TOY[0]["question"], "draft": ""}])
    out, report = pairs.build(first, gold, mode="quality", drafts_2=short, allow_empty=True, k=2, decompositions=toy)
    assert report["dropped"]["empty_draft"] == 1 and report["dropped"]["only_in_one"] == 1
    assert [p["question"] for p in out] == [PAIR_TOY[1]["question"]]


def test_pairs_cli_quality(pair_files, tmp_path):
    toy, gold, first, second = pair_files
    out = tmp_path / "pairs.jsonl"
    r = cli("pairs", "--mode", "quality", "--drafts", first, "--drafts-2", second, "--gold", gold,
            "--decompositions", toy, "--k", 2, "--margin", 0.2, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "quality pairs" in r.stdout and out.is_file()
    rep = json.loads((tmp_path / "pairs.report.json").read_text())
    assert rep["rule"]["store"]["questions"] == str(gold)
    bad = cli("pairs", "--mode", "quality", "--drafts", first, "--gold", gold, "-o", tmp_path / "x.jsonl")
    assert bad.returncode == 2 and "--drafts-2" in bad.stderr and not (tmp_path / "x.jsonl").exists()


def test_makefile_plans_quality_pairs():
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "pairs", "PY=python3", "PROFILE=cpu",
                          "PAIR_MODE=quality", "C_VARIANT=quality"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for seed in (2, 3):
        assert (f"drafts --base models/cot_phaseB/merged --name cot_phaseB_sampled_s{seed} --out-root data/drafts "
                f"--splits train \\\n  --temperature 0.8 --seed {seed}") in out
    assert ("pairs --mode quality --drafts data/drafts/cot_phaseB_sampled_s2/train.jsonl --drafts-2 "
            "data/drafts/cot_phaseB_sampled_s3/train.jsonl --margin 0.2") in out
    assert "-o data/pairs-quality.jsonl" in out and "data/drafts/cot_phaseB/train.jsonl" not in out


def test_quality_pairs_length_limit(pair_files, tiny_llama_dir, tmp_path):
    toy, gold, first, second = pair_files
    long = write_jsonl(tmp_path / "long.jsonl", [
        {"question": PAIR_TOY[1]["question"], "draft": draft(*["What colour is the sky?"] * 6)}])
    out, report = pairs.build(first, gold, mode="quality", drafts_2=long, k=2, decompositions=toy,
                              tokenizer=tiny_llama_dir, max_len=254)
    assert out and report["dropped"]["too_long"] == 0 and report["longest_pair_tokens"] > 0
    with pytest.raises(InputError, match="'too_long': 1"):
        pairs.build(first, gold, mode="quality", drafts_2=long, k=2, decompositions=toy,
                    tokenizer=tiny_llama_dir, max_len=report["longest_pair_tokens"] - 1)


def test_sampled_draft_sets_are_seeded(tiny_llama_dir, tmp_path):
    """What `make drafts-sampled` runs: the same seed gives the same drafts, another seed others."""
    from askdraft import drafts
    from conftest import strategyqa_split

    data = tmp_path / "data"
    data.mkdir()
    rows = (strategyqa_split() / "strategyqa_train_cot.jsonl").read_text().splitlines()[:6]
    (data / "strategyqa_train_cot.jsonl").write_text("\n".join(rows) + "\n")
    texts = {}
    for name, seed in (("s2", 2), ("s2_again", 2), ("s3", 3)):
        drafts.run(tiny_llama_dir, name, splits=("train",), data=data, out_root=tmp_path / "drafts", batch_size=3,
                   seed=seed, max_new_tokens=12, temperature=0.8)
        texts[name] = [json.loads(x)["draft"] for x in (tmp_path / "drafts" / name / "train.jsonl").read_text().splitlines()]
    assert texts["s2"] == texts["s2_again"] and texts["s2"] != texts["s3"]


def test_question_quality_stages_paired(tmp_path):
    """--stage B=... --stage C=...: each stage's recall as --drafts scores it, C - B paired per question."""
    toy = write_toy(tmp_path / "decompositions.jsonl")
    b = write_jsonl(tmp_path / "b.jsonl", DRAFTS)
    better = [{**DRAFTS[0]}, {**DRAFTS[1]}, {"question": TOY[2]["question"], "draft": draft("What is coffee made from?")}]
    c = write_jsonl(tmp_path / "c.jsonl", better[::-1])  # another order: paired by question, not by line
    out = tmp_path / "qq.json"
    r = cli("question-quality", "--stage", f"B={b}", "--stage", f"C={c}", "--decompositions", toy, "--k", 2, "-o", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    single = {}
    for name, path in (("B", b), ("C", c)):
        one = tmp_path / f"{name}.json"
        assert cli("question-quality", "--drafts", path, "--decompositions", toy, "--k", 2, "-o", one).returncode == 0
        single[name] = {row["question"]: row["recall"]["draft"] for row in json.loads(one.read_text())["per_question"]}
    for row in res["per_question"]:
        assert row["recall"]["B"] == single["B"][row["question"]] and row["recall"]["C"] == single["C"][row["question"]]
    d = res["differences"]["C - B"]
    diffs = [row["recall"]["C"] - row["recall"]["B"] for row in res["per_question"]]
    assert d["diff"] == pytest.approx(sum(diffs) / len(diffs)) and d["better"] == 1 and d["worse"] == 0
    assert quality.summary_entry(out)["recall"]["C"]["mean"] == pytest.approx(sum(single["C"].values()) / 3)
    fewer = write_jsonl(tmp_path / "fewer.jsonl", DRAFTS[:2])
    r = cli("question-quality", "--stage", f"B={b}", "--stage", f"C={fewer}", "--decompositions", toy, "-o", tmp_path / "x.json")
    assert r.returncode != 0 and "other questions" in r.stderr and not (tmp_path / "x.json").exists()


def test_summary_and_report_show_question_quality(tmp_path):
    """make quality's file -> summary.json's question_quality block -> report.md's table and PNG."""
    from askdraft import evaluate, report, summary
    from askdraft.io import write_json, write_jsonl as write_rows

    toy = write_toy(tmp_path / "decompositions.jsonl")
    b = write_jsonl(tmp_path / "b.jsonl", DRAFTS)
    res = quality.run_stages({"B": b, "C": b}, tmp_path / "m" / "question_quality.json", k=2, decompositions=toy)
    jsonl, meta = evaluate.eval_paths(tmp_path, "m", "C", "strategyqa_draft")
    write_rows(jsonl, [{"question": d["question"], "correct": i % 2} for i, d in enumerate(DRAFTS)])
    write_json(meta, {"stage": "C", "task": "strategyqa_draft", "acc": 1 / 3, "n": 3, "base": "b", "adapter": "a",
                      "dev_sha256": "0" * 64, "drafts_sha256": None, "device": "cpu", "run_wall_s": 1.0,
                      "run_started": "t", "commit": "c" * 40})
    s = summary.summarize("m", tmp_path)
    assert s["question_quality"]["recall"] == res["recall"] and "per_question" not in s["question_quality"]
    md = report.write_report("m", tmp_path).read_text()
    assert "Question quality" in md and f"{res['recall']['B']['mean']:.3f}" in md and "C − B" not in md
    assert "| C - B | +0.000 |" in md and (tmp_path / "m" / "question_quality.png").stat().st_size > 1000
