"""`askdraft summarize`: results/<model>/summary.json from the per-question eval files.

Every accuracy carries its "yes" share and the degenerate flag (stats.answer_share: one answer to
95 % of the questions or more), beside the majority-class baseline on the same questions; the
paired differences carry bootstrap CIs and McNemar's p; the overrides block is shown against what
independence of the final and tentative answers would give at the same answer shares.
"""
import importlib.metadata
import json
from pathlib import Path

from askdraft import REPO_ROOT, answerer, git_commit, pack, quality, stats
from askdraft.evaluate import (ABLATIONS, HEADLINE, NOCONCLUSION, ORACLE, PACKAGES, STAGE_DIFFS, STAGE_ORDER,
                               now)
from askdraft.io import InputError, sha256_file, write_json

def load_eval_rows(results, model):
    """{(stage, task): (meta, rows)} for every finished eval of `model`: its evals/ folder as a
    run writes it, or the packed evals.jsonl.gz of a committed run (askdraft.pack), or both
    (an eval in the folder replaces the packed one)."""
    root = Path(results) / model
    packed = pack.read_packed(root / pack.PACKED) if (root / pack.PACKED).is_file() else {}
    return {**packed, **pack.folder_evals(root / "evals")}


def load_evals(results, model, eval_rows=None):
    """{(stage, task): (meta, {question: correct})} for every finished eval of `model` (or of
    load_eval_rows' `eval_rows`), its meta with the answer shares of its rows."""
    evals = {}
    for key, (meta, rows) in (eval_rows or load_eval_rows(results, model)).items():
        meta = dict(meta)
        if rows and all("pred" in r for r in rows):  # the answer share, beside the accuracy everywhere
            meta["answers"] = stats.answer_share(r["pred"] for r in rows)
        if rows and all("answer" in r for r in rows):
            meta["gold_yes_share"] = sum(r["answer"] == "yes" for r in rows) / len(rows)
        evals[key] = (meta, {r["question"]: r["correct"] for r in rows})
    return evals


def overrides(rows):
    """How the final answer treats the draft's tentative answer: of the questions whose
    tentative answer is wrong, the share answered right (overridden); of those whose tentative
    answer is right, the share kept right; and how often the final answer equals the tentative."""
    parsed = [r for r in rows if r.get("tentative") in ("yes", "no")]
    if not parsed:  # no draft states a conclusion (e.g. the conclusion-free form): nothing to override
        return None
    wrong = [r for r in parsed if r["tentative"] != r["answer"]]
    right = [r for r in parsed if r["tentative"] == r["answer"]]
    def share(rs, key):
        return {"share": round(sum(key(r) for r in rs) / len(rs), 4) if rs else None, "n": len(rs)}
    t_yes = sum(r["tentative"] == "yes" for r in parsed) / len(parsed)
    f_yes = sum(r["pred"] == "yes" for r in parsed) / len(parsed)
    return {"overrides_wrong_tentative": share(wrong, lambda r: r["correct"]),
            "keeps_right_tentative": share(right, lambda r: r["correct"]),
            "final_equals_tentative": share(parsed, lambda r: r["pred"] == r["tentative"]),
            # what independence of the two answers gives at the same "yes" shares (the baseline)
            "final_equals_tentative_if_independent": round(stats.independent_agreement(t_yes, f_yes), 4),
            "n_with_conclusion": len(parsed), "n": len(rows), "unparsed_tentative": len(rows) - len(parsed)}


def stage_key(stage):
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def acc_entry(correct, meta=None):
    """Accuracy with its CI, and (from load_evals' meta) the "yes" share and the degenerate flag."""
    r = stats.accuracy(list(correct.values()))
    return {**{k: r[k] for k in ("accuracy", "ci_low", "ci_high", "n")}, **((meta or {}).get("answers") or {})}


def majority_baseline(evals):
    """The majority-class answer on the evaluated questions and the accuracy it alone would get."""
    meta, correct = next(((m, c) for m, c in evals.values() if "gold_yes_share" in m), (None, None))
    if meta is None:
        return None
    yes = meta["gold_yes_share"]
    return {"answer": "yes" if yes > 0.5 else "no", "accuracy": round(max(yes, 1 - yes), 4), "n": len(correct)}


def paired(c1, c2):
    """Accuracy difference over the questions both runs answered (same order)."""
    qs = [q for q in c1 if q in c2]
    if not qs:
        return None
    r = stats.paired_difference([c1[q] for q in qs], [c2[q] for q in qs])
    return {k: r[k] for k in ("diff", "ci_low", "ci_high", "mcnemar_p", "n",
                              "only_1_correct", "only_2_correct")}


def _rel(path, root):
    """`path` relative to results/<model>/ where it lies inside it (results move with it)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def attribution_share(path, root):
    if not path.is_file():
        return None
    a = json.loads(path.read_text(encoding="utf-8"))
    return {"share": a["mean_share"], "ci_low": a["ci_low"], "ci_high": a["ci_high"],
            "n": a["n"], "file": _rel(path, root)}


def judge_entry(path, root):
    if not path.is_file():
        return None
    j = json.loads(path.read_text(encoding="utf-8"))
    return {"judge_model": j["judge_model"], "win_rate": j["win_rate"], "ci_low": j["ci_low"],
            "ci_high": j["ci_high"], "n": j["n"], "model_1": j.get("name_a"),
            "model_2": j.get("name_b"), "file": _rel(path, root)}


def provenance_data(data_dir):
    """{data/<file>: sha256} of the split files MANIFEST.json (written by `askdraft data`) names."""
    manifest = Path(data_dir) / "MANIFEST.json"
    if not manifest.is_file():
        return {}
    data = {f"data/{k}": v["sha256"] for k, v in json.loads(manifest.read_text())["splits"].items()}
    data["data/MANIFEST.json"] = sha256_file(manifest)
    return data


def provenance(evals, wall_times=None, data_dir=REPO_ROOT / "data"):
    def shas(paths):
        return {str(p.relative_to(REPO_ROOT)): sha256_file(p) for p in sorted(paths)}
    data = provenance_data(data_dir)
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    walls = {}
    for meta, _ in evals.values():  # tasks of one lm-eval call share its wall time
        walls.setdefault(meta["stage"], {})[meta["run_started"]] = meta["run_wall_s"]
    return {"git_commit": git_commit(), "recipes_sha256": shas((REPO_ROOT / "recipes").rglob("*.yaml")),
            "data_sha256": data, "packages": versions,
            "devices": sorted({m["device"] for m, _ in evals.values()}),
            "eval_wall_s": {s: round(sum(w.values()), 2) for s, w in walls.items()},
            "stage_wall_s": wall_times or {},
            "evals": {f"{m['stage']}.{m['task']}": {k: m[k] for k in (
                "acc", "n", "base", "adapter", "drafts_sha256", "dev_sha256", "device",
                "run_wall_s", "run_started", "commit")} for m, _ in evals.values()}}


def summarize(model_name, results="results", ablation_stage=None, attribution_dir=None,
              judge=None, wall_times=None, data_dir=REPO_ROOT / "data"):
    """Build and write results/<model>/summary.json; returns it."""
    from askdraft.random_base import random_weights_note
    root = Path(results) / model_name
    eval_rows = load_eval_rows(results, model_name)
    evals = load_evals(results, model_name, eval_rows)
    if not evals:
        raise InputError(root / "evals", None, "no evaluation results: run `askdraft evaluate` first")
    stages, stage_tasks = {}, {}
    for stage in sorted({s for s, _ in evals}, key=stage_key):
        task = next((t for t in HEADLINE if (stage, t) in evals), None)
        if task:
            stages[stage], stage_tasks[stage] = evals[stage, task][1], task
    if ablation_stage is None:
        full = [s for s, _ in evals if all((s, t) in evals for t in ABLATIONS.values())]
        ablation_stage = max(full, key=stage_key) if full else None
    abl = {k: None for k in (*ABLATIONS, "noconclusion", "draft_minus_nodraft", "draft_minus_shuffled",
                             "noconclusion_minus_nodraft", "overrides")}
    if ablation_stage is not None:
        tasks = {**ABLATIONS, "noconclusion": NOCONCLUSION}
        c = {k: evals[ablation_stage, t][1] for k, t in tasks.items() if (ablation_stage, t) in evals}
        abl.update({k: acc_entry(v, evals[ablation_stage, tasks[k]][0]) for k, v in c.items()})
        for one, other in (("draft", "nodraft"), ("draft", "shuffled"), ("noconclusion", "nodraft")):
            if one in c and other in c:
                abl[f"{one}_minus_{other}"] = paired(c[one], c[other])
        if "draft" in c:
            abl["overrides"] = overrides(eval_rows[ablation_stage, ABLATIONS["draft"]][1])
    for s1, s2 in STAGE_DIFFS:
        abl[f"{s1}_minus_{s2}"] = paired(stages[s1], stages[s2]) if s1 in stages and s2 in stages else None
    oracle = oracle_ladder(evals)
    ties = {f"{s}.{t}": m.get("ties") for (s, t), (m, _) in evals.items() if m.get("ties")}
    attribution_dir = Path(attribution_dir or root / "attribution")
    prov = provenance(evals, wall_times or _read_wall_times(root), data_dir)
    prov.update(stage_tasks=stage_tasks, ablation_stage=ablation_stage)
    summary = {
        "model": model_name, "device": ", ".join(prov["devices"]), "date": now(),
        "commit": prov["git_commit"],
        "stages": {s: acc_entry(c, evals[s, stage_tasks[s]][0]) for s, c in stages.items()},
        "majority_baseline": majority_baseline(evals),
        "ablations": abl,
        "oracle": oracle,
        "answered": answerer.summary(evals),  # the fact-store tasks: own draft vs no draft and the controls
        "ties": ties,
        "attribution_draft_share": {w: attribution_share(attribution_dir / f"{w}.json", root)
                                    for w in ("before_dpo", "after_dpo")},
        "judge": judge_entry(Path(judge or root / "judge.json"), root),
        "question_quality": quality.summary_entry(root / "question_quality.json"),
        "random_weights": random_weights_note(m["base"] for m, _ in evals.values()),
        "provenance": prov}
    write_json(root / "summary.json", summary)
    return summary


def oracle_ladder(evals):
    """The teacher-draft ladder on the (last) stage that ran it, each rung's accuracy and its
    difference from the same stage's no-draft accuracy."""
    ran = [s for s, t in evals if t == ORACLE["teacher_noconclusion"]]
    if not ran:
        return None
    stage = max(ran, key=stage_key)
    nodraft = next((evals[stage, t][1] for t in (ABLATIONS["nodraft"], "strategyqa") if (stage, t) in evals), None)
    out = {"stage": stage}
    for k, t in ORACLE.items():
        if (stage, t) in evals:
            c = evals[stage, t][1]
            out[k] = {**acc_entry(c, evals[stage, t][0]), "minus_nodraft": paired(c, nodraft) if nodraft else None}
    return out


def _read_wall_times(root):
    """Optional results/<model>/wall_times.json ({stage: seconds}) written by the pipeline."""
    path = root / "wall_times.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


