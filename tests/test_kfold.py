"""askdraft kfold: fold folders, the validation choice of phase C, and pooling every fold's
per-question results into one summary (the accuracy computed again here, by hand)."""
import json
import subprocess
from pathlib import Path

import pytest

from askdraft import REPO_ROOT, data, kfold, stats
from askdraft.evaluate import eval_paths
from askdraft.io import write_json, write_jsonl

MODEL = "tiny"


def fake_eval(results, model, stage, task, rows, acc_fold):
    """One eval's files as `askdraft evaluate` writes them (rows: (question, answer, correct, tentative))."""
    jsonl, meta = eval_paths(results, model, stage, task)
    write_jsonl(jsonl, [{"doc_id": i, "question": q, "answer": a, "correct": c, "pred": a if c else "x",
                         "loglik": {"yes": -1.0, "no": -2.0}, "tie": 0, "tentative": t}
                        for i, (q, a, c, t) in enumerate(rows)])
    write_json(meta, {"model": model, "stage": stage, "task": task, "metric": "acc", "filter": "none",
                      "acc": acc_fold, "n": len(rows), "ties": 0, "base": "b", "adapter": None, "dev": "d",
                      "dev_sha256": "s", "drafts": None, "drafts_sha256": None, "device": "cpu",
                      "dtype": "float32", "run_wall_s": 1.0, "run_started": "2026-11-30T00:00:00+00:00",
                      "commit": "c"})


def test_pool_concatenates_folds_and_recomputes_the_statistics(tmp_path):
    root, rng = tmp_path / "runs", __import__("random").Random(0)
    questions = [f"Is q{i} true?" for i in range(40)]
    truth = {}
    selections = {}
    for f in range(2):
        chosen = ("answer-rpo", "draft-rpo")[f]
        res = kfold.fold_dir(root, f) / "results"
        qs = questions[f::2]
        for stage, task in (("A", "strategyqa"), ("C", "strategyqa_draft"), ("C", "strategyqa_nodraft"),
                            ("C", "strategyqa_shuffleddraft")):
            rows = [(q, "yes", rng.random() < 0.6, "yes" if rng.random() < 0.5 else "no") for q in qs]
            truth.setdefault((stage, task), {}).update({q: int(c) for q, _, c, _ in rows})
            fake_eval(res, f"{MODEL}-{chosen}", stage, task, rows, sum(r[2] for r in rows) / len(rows))
        write_json(res / f"{MODEL}-{chosen}" / "attribution" / "after_dpo.json",
                   {"per_question": [{"id": i, "share": 0.1 * (f + 1)} for i in range(3)]})
        selections[f] = {"fold": f, "chosen": chosen, "finished": True, "seconds": 1.0,
                         "validation": {"answer-rpo": {"acc": 0.6 - 0.1 * f, "n": 10},
                                        "draft-rpo": {"acc": 0.5, "n": 10}}}
    (kfold.fold_dir(root, 0) / "data").mkdir(parents=True)
    s = kfold.pool(root, 2, MODEL, tmp_path / "results" / "pooled", selections)

    for (stage, task), by_q in truth.items():
        rows = [json.loads(x) for x in eval_paths(tmp_path / "results", "pooled", stage, task)[0].read_text().splitlines()]
        assert sorted(r["question"] for r in rows) == sorted(questions)
        assert sum(r["correct"] for r in rows) / 40 == pytest.approx(sum(by_q.values()) / 40)
    assert s["stages"]["C"]["accuracy"] == pytest.approx(sum(truth["C", "strategyqa_draft"].values()) / 40)
    order = sorted(questions)
    direct = stats.paired_difference([truth["C", "strategyqa_draft"][q] for q in order],
                                     [truth["C", "strategyqa_nodraft"][q] for q in order])
    assert s["ablations"]["draft_minus_nodraft"]["diff"] == pytest.approx(direct["diff"])
    assert s["ablations"]["draft_minus_nodraft"]["n"] == 40
    assert s["attribution_draft_share"]["after_dpo"]["share"] == pytest.approx(0.15)
    assert s["kfold"]["selection"]["1"]["chosen"] == "draft-rpo"
    assert s["kfold"]["validation_pooled"] == {"answer-rpo": 0.55, "draft-rpo": 0.5}
    assert json.loads((tmp_path / "results" / "pooled" / "selection.json").read_text()) == s["kfold"]
    md = (tmp_path / "results" / "pooled" / "report.md").read_text()
    assert "| pooled | 55.0 % | 50.0 % |  |" in md and "draft − nodraft" in md


def test_fold_folder_runs_the_repo_makefile_on_its_own_files(tmp_path, smollm2_dir):
    d = kfold.prepare_fold(tmp_path / "runs", 1, 5, 0.1, 1234, smollm2_dir)
    m = json.loads((d / "data" / "MANIFEST.json").read_text())
    assert (m["folds"], m["fold"], m["val_frac"]) == (5, 1, 0.1)
    assert (d / "data" / data.FILES["val"]).is_file() and (d / "models" / "base" / smollm2_dir.name / "config.json").is_file()
    env = {"PATH": "/usr/bin:/bin", "PY": "python3", "PROFILE": "gpu-fast", "C_VARIANT": "answer-rpo",
           "C_PROFILES": "c-answer-rpo", "PAIR_MODE": "answer", "MODEL_NAME": "m-answer-rpo"}
    plan = subprocess.run(["make", "-n", "-f", str(d / "Makefile"), "val-c", "sg-eval"], cwd=d, env=env,
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "--name dpo_phaseC-answer-rpo_val" in plan.stdout and "--splits val" in plan.stdout
    assert "--dev data/strategyqa_val.jsonl" in plan.stdout and "--profile c-answer-rpo" in plan.stdout
    assert "--stage SG" in plan.stdout and str(REPO_ROOT) not in plan.stdout.replace(str(REPO_ROOT / "tools"), "")
    with pytest.raises(kfold.InputError, match="unknown candidate"):
        kfold.run(2, tmp_path / "r", candidates=["nope"], base=smollm2_dir)


def test_folds_get_their_gpu_round_robin(tmp_path, smollm2_dir, monkeypatch):
    """--gpus 0,1: fold f's stage processes see CUDA_VISIBLE_DEVICES = gpus[f % 2], whatever the
    caller's is; without --gpus they inherit the caller's."""
    seen, real_run = {}, subprocess.run

    def fake_run(cmd, *args, **kw):
        if any(str(c).endswith("run_stages.py") for c in cmd):
            seen[Path(kw["cwd"]).name] = kw["env"].get("CUDA_VISIBLE_DEVICES")
            return subprocess.CompletedProcess(cmd, 1)  # the fold stops at its first stage
        return real_run(cmd, *args, **kw)

    monkeypatch.setattr(kfold.subprocess, "run", fake_run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    for gpus, expect in [("0,1", ["0", "1", "0"]), (None, ["7", "7", "7"])]:
        seen.clear()
        with pytest.raises(RuntimeError, match="failed"):
            kfold.run(3, tmp_path / "r", base=smollm2_dir, gpus=gpus, parallel=3)
        assert [seen[kfold.fold_dir(tmp_path / "r", f).name] for f in range(3)] == expect, seen


def test_choose_never_picks_a_degenerate_candidate_and_states_ties():
    from askdraft.kfold import TIE_RULE, choose

    def v(acc, degenerate=False):
        return {"acc": acc, "n": 100, "yes_share": 0.99 if degenerate else 0.5, "degenerate": degenerate}
    val = {"a": v(0.60, degenerate=True), "b": v(0.52), "c": v(0.52), "d": {"acc": None, "n": 0, "error": "x"}}
    name, how = choose(val, ["a", "b", "c", "d"])
    assert name == "b" and how["excluded_degenerate"] == ["a"] and how["tied"] == ["b", "c"]
    assert how["tie_rule"] == TIE_RULE and not how["all_degenerate"]
    assert choose(val, ["c", "b"])[0] == "c"  # the order of --candidates breaks the tie
    name, how = choose({"a": v(0.55, True), "b": v(0.58, True)}, ["a", "b"])
    assert name == "b" and how["all_degenerate"] and how["tied"] == []


def test_val_accuracy_reads_the_answer_share(tmp_path):
    from askdraft.evaluate import eval_paths
    from askdraft.io import write_json, write_jsonl
    from askdraft.kfold import val_accuracy

    for name, preds in (("lean", ["yes"] * 94 + ["no"] * 6), ("const", ["no"] * 95 + ["yes"] * 5)):
        rows, meta = eval_paths(tmp_path / "results" / "val", f"m-{name}", "C", "strategyqa_draft")
        write_jsonl(rows, [{"question": f"q{i}", "pred": p, "correct": 1} for i, p in enumerate(preds)])
        write_json(meta, {"acc": 0.5, "n": 100})
    assert val_accuracy(tmp_path, "m", "lean") == {"acc": 0.5, "n": 100, "yes_share": 0.94, "degenerate": False}
    assert val_accuracy(tmp_path, "m", "const")["degenerate"]  # 95 % "no": one answer to >= 95 %
