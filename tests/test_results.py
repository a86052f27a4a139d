"""The committed study's numbers come from its committed per-question files: summary.json's
accuracies, answer shares, flags and paired differences, and question_quality.json, recomputed."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from askdraft import quality, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from doc_tables import HEADLINE_RUN, RESULTS  # noqa: E402  (tools/doc_tables.py)


@pytest.fixture(scope="module")
def committed():
    return json.loads((RESULTS / HEADLINE_RUN / "summary.json").read_text(encoding="utf-8"))


def test_summary_is_reproduced_from_the_per_question_files(tmp_path, committed):
    shutil.copytree(RESULTS / HEADLINE_RUN / "evals", tmp_path / "m" / "evals")
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
