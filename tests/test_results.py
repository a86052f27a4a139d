"""The committed study's numbers come from its committed per-question files: summary.json's
accuracies, answer shares, flags and paired differences, and question_quality.json, recomputed."""
import gzip
import json
import shutil
import tarfile
import sys
from pathlib import Path

import pytest
from PIL import Image

from askdraft import pack, quality, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from doc_tables import HEADLINE_RUN, RESULTS  # noqa: E402  (tools/doc_tables.py)


@pytest.fixture(scope="module")
def committed():
    return json.loads((RESULTS / HEADLINE_RUN / "summary.json").read_text(encoding="utf-8"))


def test_summary_is_reproduced_from_the_per_question_files(tmp_path, committed):
    (tmp_path / "m").mkdir()
    shutil.copy(RESULTS / HEADLINE_RUN / pack.PACKED, tmp_path / "m")
    s = summary.summarize("m", tmp_path)
    for stage, e in committed["stages"].items():
        for k in ("accuracy", "ci_low", "ci_high", "n", "yes_share", "degenerate"):
            assert s["stages"][stage][k] == pytest.approx(e[k]), (stage, k)
    assert s["majority_baseline"] == committed["majority_baseline"]
    for k, d in committed["ablations"].items():
        if isinstance(d, dict) and "diff" in d:
            assert s["ablations"][k]["diff"] == pytest.approx(d["diff"]) and s["ablations"][k]["mcnemar_p"] == pytest.approx(d["mcnemar_p"])
    assert s["ablations"]["overrides"] == committed["ablations"]["overrides"]
    assert s["answered"] == committed["answered"]
    assert committed["stages"]["base"]["degenerate"] and not committed["stages"]["C"]["degenerate"]


def test_question_quality_is_reproduced_from_the_committed_drafts(tmp_path, committed):
    run = RESULTS / HEADLINE_RUN
    out = quality.run_stages({"B": run / "drafts/B.dev.jsonl.gz", "C": run / "drafts/C.dev.jsonl.gz"}, tmp_path / "q.json")
    stored = json.loads((run / "question_quality.json").read_text(encoding="utf-8"))
    assert out["recall"] == stored["recall"] and out["differences"] == stored["differences"]
    assert committed["question_quality"]["differences"]["C - B"] == stored["differences"]["C - B"]


PACKED_RUNS = sorted(p.parent.name for p in RESULTS.glob(f"*/{pack.PACKED}"))


def close(recomputed, stored, where):
    """Every number (and flag) `stored` has that `recomputed` also has is equal; older runs'
    summaries lack some newer keys, and a key the code no longer writes is not compared."""
    common = [k for k, v in stored.items() if k in recomputed and isinstance(v, (int, float, bool))]
    for k in common:
        assert recomputed[k] == pytest.approx(stored[k]), (*where, k)
    return common


@pytest.mark.parametrize("run", PACKED_RUNS)
def test_every_committed_summary_is_reproduced_from_its_packed_file(tmp_path, run):
    stored = json.loads((RESULTS / run / "summary.json").read_text(encoding="utf-8"))
    (tmp_path / run).mkdir()
    shutil.copy(RESULTS / run / pack.PACKED, tmp_path / run)
    s = summary.summarize(run, tmp_path, ablation_stage=stored["provenance"].get("ablation_stage"))
    assert set(s["stages"]) == set(stored["stages"])
    for stage, e in stored["stages"].items():
        assert {"accuracy", "n"} <= set(close(s["stages"][stage], e, (stage,)))
    compared = 0
    for k, d in stored["ablations"].items():
        if isinstance(d, dict) and ("diff" in d or "accuracy" in d):
            compared += len(close(s["ablations"][k], d, ("ablations", k)))
    assert compared or not any(stored["ablations"].values())
    for stage, entries in (stored.get("answered") or {}).items():
        for k, e in entries.items():
            close(s["answered"][stage][k], e, ("answered", stage, k))


def crafted_run(root):
    """A small run folder as `askdraft evaluate` writes it: two evals, one with .jsonl.gz rows."""
    evals = root / "evals"
    evals.mkdir(parents=True)
    for stage, task, gz in (("A", "strategyqa", False), ("C", "strategyqa_draft", True)):
        (evals / f"{stage}.{task}.json").write_text(json.dumps({"stage": stage, "task": task, "acc": 0.5, "n": 2}))
        rows = "".join(json.dumps({"question": f"Q{i} \u2028?", "correct": i % 2, "pred": "yes"}) + "\n" for i in range(2))
        path = evals / f"{stage}.{task}.jsonl"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(rows.encode()))
        else:
            path.write_text(rows, encoding="utf-8")
    (evals / ".done").write_text("")
    (root / "folds" / "fold_0").mkdir(parents=True)
    (root / "folds" / "fold_0" / "selection.json").write_text('{"chosen": "x"}')
    (root / "run.log").write_text("a log\n")
    (root / "judge.calls.jsonl").write_text('{"call": 1}\n')
    (root / "attribution" / "heatmaps_after").mkdir(parents=True)
    for i, (w, h) in enumerate(((30, 10), (20, 7)), 1):
        Image.new("RGBA", (w, h), (i * 100, 0, 0, 255)).save(root / "attribution" / "heatmaps_after" / f"attribution_{i}.png")


def test_pack_results_round_trips_and_is_idempotent(tmp_path):
    from askdraft.cli import main
    crafted_run(tmp_path / "a" / "m")
    crafted_run(tmp_path / "b" / "m")
    before = summary.load_evals(tmp_path / "a", "m")
    assert main(["pack-results", str(tmp_path / "a" / "m")]) == 0
    packed = tmp_path / "a" / "m"
    assert sorted(p.name for p in packed.iterdir()) == ["attribution", "evals.jsonl.gz", "folds.tar.gz", "logs.tar.gz"]
    assert summary.load_evals(tmp_path / "a", "m") == before
    with tarfile.open(packed / "folds.tar.gz") as tar:
        assert json.load(tar.extractfile("folds/fold_0/selection.json")) == {"chosen": "x"}
    with tarfile.open(packed / "logs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["judge.calls.jsonl", "run.log"]
        assert tar.extractfile("run.log").read() == b"a log\n"
    sheet = Image.open(packed / "attribution" / "heatmaps_after.png")
    assert sheet.size == (30, 17) and sheet.getpixel((0, 0))[0] == 100 and sheet.getpixel((0, 10))[0] == 200
    assert [p.name for p in (packed / "attribution").iterdir()] == ["heatmaps_after.png"]
    bytes_once = {p.relative_to(packed): p.read_bytes() for p in packed.rglob("*") if p.is_file()}
    assert pack.pack(packed) == []  # a packed folder: nothing to do, nothing rewritten
    assert {p.relative_to(packed): p.read_bytes() for p in packed.rglob("*") if p.is_file()} == bytes_once
    other = tmp_path / "b" / "m"
    pack.pack(other)  # the same folder elsewhere packs to the same bytes
    assert {p.relative_to(other): p.read_bytes() for p in other.rglob("*") if p.is_file()} == bytes_once


def test_a_bad_packed_file_is_an_error_naming_its_line(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / pack.PACKED).write_bytes(gzip.compress(b'{"meta": {"stage": "A", "task": "t"}}\n{"question": "q"}\n'))
    with pytest.raises(pack.InputError, match=r"evals.jsonl.gz.*2.*correct"):
        summary.load_evals(tmp_path, "m")
