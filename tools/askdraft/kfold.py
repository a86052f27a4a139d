"""`askdraft kfold`: the study over every question, with k folds side by side.

Fold F of a stratified K-fold split (`askdraft data --folds K --fold F --val-frac V`) gets a
folder <root>/fold_F/ with its own data/, models/, results/ and a Makefile that includes the
repo's, so each stage is the ordinary make target. Per fold, in one process (run_stages.py):
  1. sft, A, B, merge, drafts                       (the pipeline up to B's drafts)
  2. every phase C candidate (C_VARIANT=NAME, C_PROFILES, PAIR_MODE): pairs, phase C, and its
     accuracy with its own drafts on the fold's validation split (`make val-c`), a part of
     train that no stage trains on
  3. the candidate with the best validation accuracy (ties: the earlier one) is the fold's C:
     its dev drafts, eval (base, A, B with the ablations and the oracle ladder, C), attribution,
     the SG round and its eval, report
Folds run in parallel (--parallel; GPUs dealt round-robin from --gpus). Then every fold's
per-question results are pooled (each question is dev in exactly one fold) into
<results>/<name>/: evals/, attribution/, summary.json (as `askdraft summarize`, over all
questions), selection.json and report.md. Re-running skips finished stages and folds.
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from askdraft import REPO_ROOT, data, git_commit, stats
from askdraft.evaluate import eval_paths
from askdraft.pipeline import KFOLD_CANDIDATE, KFOLD_FINAL, KFOLD_PREP
from askdraft.summary import load_eval_rows, provenance_data, summarize
from askdraft.io import InputError, read_jsonl, write_json, write_jsonl
from askdraft.report import write_report

# name: (pair mode, phase C recipe profiles); "seed" is the seed's settings unchanged
CANDIDATES = {"seed": ("draft", "c-seed-lr"), "answer-rpo": ("answer", "c-answer-rpo"),
              "draft-rpo": ("draft", "c-draft-rpo"),
              # two drafts sampled from B per training question, the one whose sub-questions find more of
              # its gold facts chosen; compared per token with the NLL term on the chosen draft, as draft-rpo
              "quality": ("quality", "c-draft-rpo")}


def fold_dir(root, f):
    return Path(root) / f"fold_{f}"


def prepare_fold(root, f, folds, val_frac, seed, base):
    """The fold's folder: split files, a Makefile including the repo's, links to the code and base."""
    d = fold_dir(root, f)
    (d / "models").mkdir(parents=True, exist_ok=True)
    if not (d / "data" / "MANIFEST.json").is_file():
        data.build(d / "data", hub=False, folds=folds, fold=f, val_frac=val_frac, seed=seed)
    (d / "Makefile").write_text(f"# fold {f} of {folds} (askdraft kfold)\ninclude {REPO_ROOT / 'Makefile'}\n")
    for name in ("recipes", "tools"):
        if not (d / name).exists():
            (d / name).symlink_to(REPO_ROOT / name)
    link = d / "models" / "base"
    if not link.exists():
        link.symlink_to(Path(base).resolve().parent)
    return d


def run_stages(d, stages, env, log):
    jobs = ["--jobs", env["KFOLD_JOBS"]] if env.get("KFOLD_JOBS") else []
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "run_stages.py"), "--makefile", str(d / "Makefile"), *jobs, *stages]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n### {' '.join(stages)}  ({' '.join(f'{k}={v}' for k, v in sorted(env.items()))})\n")
        f.flush()
        # not the calling make's MAKEFLAGS: its command-line variables (MODEL_NAME=...) would override
        # each candidate's in every make the fold runs
        outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        code = subprocess.run(cmd, cwd=d, env={**outer, **env}, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{d}: stages {stages} failed (exit {code}); see {log}")


def candidate_env(base_env, model, name):
    mode, profiles = CANDIDATES[name]
    return {**base_env, "C_VARIANT": name, "C_PROFILES": profiles, "PAIR_MODE": mode, "MODEL_NAME": f"{model}-{name}"}


TIE_RULE = "equal validation accuracy: the candidate listed first in --candidates"


def val_accuracy(d, model, name):
    rows_path, meta = eval_paths(d / "results" / "val", f"{model}-{name}", "C", "strategyqa_draft")
    m = json.loads(meta.read_text(encoding="utf-8"))
    preds = [r["pred"] for r in read_jsonl(rows_path, required=("pred",), allow_extra=True)]
    return {"acc": m["acc"], "n": m["n"], **stats.answer_share(preds)}


def choose(val, candidates):
    """The best validation accuracy among candidates that ran and are not degenerate (all degenerate:
    among those that ran, said so); ties by TIE_RULE. Returns (name, how it was chosen)."""
    ok = [n for n in candidates if val[n]["acc"] is not None]
    healthy = [n for n in ok if not val[n]["degenerate"]]
    pool_ = healthy or ok
    best = max(val[n]["acc"] for n in pool_)
    tied = [n for n in pool_ if val[n]["acc"] == best]
    return tied[0], {"all_degenerate": not healthy, "excluded_degenerate": [n for n in ok if n not in healthy],
                     "tied": tied if len(tied) > 1 else [], "tie_rule": TIE_RULE}


def run_fold(root, f, candidates, base_env, model, final_stages):
    """Steps 1-3 for one fold; returns its selection record (also written to selection.json)."""
    d, log = fold_dir(root, f), fold_dir(root, f) / "kfold.log"
    done = d / "selection.json"
    if done.is_file() and json.loads(done.read_text())["finished"]:
        return json.loads(done.read_text())
    t0 = time.time()
    run_stages(d, KFOLD_PREP, {**base_env, "MODEL_NAME": model}, log)
    def candidate(name):  # one that fails (e.g. no parseable draft for its pairs) is not chosen
        try:
            run_stages(d, KFOLD_CANDIDATE, candidate_env(base_env, model, name), d / f"kfold-{name}.log")
            return val_accuracy(d, model, name)
        except RuntimeError as e:
            return {"acc": None, "n": 0, "error": str(e)}
    with concurrent.futures.ThreadPoolExecutor(len(candidates)) as side_by_side:  # their own files and logs
        val = dict(zip(candidates, side_by_side.map(candidate, candidates)))
    ok = [n for n in candidates if val[n]["acc"] is not None]
    if not ok:
        raise RuntimeError(f"{d}: every phase C candidate failed; see {log}")
    chosen, how = choose(val, candidates)
    if how["all_degenerate"]:
        print(f"kfold: fold {f}: every phase C candidate is degenerate on validation; chosen by accuracy anyway",
              flush=True)
    record = {"fold": f, "validation": val, "chosen": chosen, "selection_rule": how, "finished": False}
    write_json(done, record)
    run_stages(d, final_stages, candidate_env(base_env, model, chosen), log)
    for name in candidates:  # what asking-trained candidates ask on dev, chosen or not (question quality)
        if name != chosen and CANDIDATES[name][0] == "quality" and val[name]["acc"] is not None:
            run_stages(d, ["drafts-c"], candidate_env(base_env, model, name), log)
    record.update(finished=True, seconds=round(time.time() - t0, 1))
    write_json(done, record)
    return record


# ---------------------------------------------------------------- pooling

def pool(root, folds, model, out, selections):
    """Concatenate every fold's per-question results of its chosen C into out/evals, pool the
    attribution shares, and summarize over all questions."""
    out = Path(out)
    per_fold = {f: fold_dir(root, f) / "results" / f"{model}-{selections[f]['chosen']}" for f in range(folds)}
    loaded = {f: load_eval_rows(res.parent, res.name) for f, res in per_fold.items()}
    metas = {}
    for f, evals in loaded.items():
        for key, (m, _) in evals.items():
            metas.setdefault(key, {})[f] = m
    for (stage, task), by_fold in sorted(metas.items()):
        if len(by_fold) != folds:
            print(f"kfold: {stage}.{task} ran in {len(by_fold)} of {folds} folds; not pooled")
            continue
        rows = []
        for f in range(folds):
            rows += [{**r, "fold": f} for r in loaded[f][stage, task][1]]
        if len({r["question"] for r in rows}) != len(rows):
            raise InputError(out, None, f"{stage}.{task}: a question is dev in two folds")
        first = by_fold[0]
        acc = sum(r["correct"] for r in rows) / len(rows)
        meta = {"model": out.name, "stage": stage, "task": task, "metric": first["metric"], "filter": first["filter"],
                "acc": acc, "n": len(rows), "ties": sum(r.get("tie", 0) for r in rows),
                "base": first["base"], "adapter": f"per fold ({stage})", "dev": "all folds",
                "dev_sha256": None, "drafts_sha256": None, "device": first["device"], "dtype": first.get("dtype"),
                "run_wall_s": round(sum(m["run_wall_s"] for m in by_fold.values()), 2),
                "run_started": min(m["run_started"] for m in by_fold.values()), "commit": first["commit"],
                "per_fold": {str(f): {k: m[k] for k in ("acc", "n", "adapter", "drafts_sha256", "dev_sha256", "commit")}
                             for f, m in sorted(by_fold.items())}}
        jsonl, meta_path = eval_paths(out.parent, out.name, stage, task)
        write_jsonl(jsonl, [{k: v for k, v in r.items() if k != "_line"} for r in rows])
        write_json(meta_path, meta)
    for which in ("before_dpo", "after_dpo"):
        shares = []
        for f in range(folds):
            path = per_fold[f] / "attribution" / f"{which}.json"
            if path.is_file():
                shares += [{**q, "fold": f} for q in json.loads(path.read_text(encoding="utf-8"))["per_question"]]
        if shares:
            r = stats.mean_ci([q["share"] for q in shares])
            write_json(out / "attribution" / f"{which}.json",
                       {"n": r["n"], "mean_share": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                        "per_question": [{k: q[k] for k in ("id", "share", "fold") if k in q} for q in shares]})
    judges = [json.loads(p.read_text()) for p in (per_fold[f] / "judge.json" for f in range(folds)) if p.is_file()]
    if judges:
        write_json(out / "judge.json", pool_judges(judges))
    walls = {str(f): {p.parent.name: json.loads(p.read_text()) for p in sorted((fold_dir(root, f) / "results").glob("*/wall_times.json"))}
             for f in range(folds)}
    pool_question_quality(root, folds, selections, out)
    summary = summarize(out.name, out.parent, data_dir=fold_dir(root, 0) / "data")
    summary["provenance"]["data_sha256"] = {  # every fold's split files, not the first fold's
        f"fold_{f}/{name}": sha for f in range(folds)
        for name, sha in provenance_data(fold_dir(root, f) / "data").items()}
    val = {n: [s["validation"][n] for s in selections.values() if s["validation"][n]["acc"] is not None]
           for n in selections[0]["validation"]}
    summary["kfold"] = {
        "folds": folds, "n_questions": summary["stages"].get("A", {}).get("n"),
        "selection": {str(f): {"validation": s["validation"], "chosen": s["chosen"], "seconds": s.get("seconds"),
                               "selection_rule": s.get("selection_rule")}
                      for f, s in sorted(selections.items())},
        "validation_pooled": {n: round(sum(v["acc"] * v["n"] for v in vs) / sum(v["n"] for v in vs), 4) if vs else None
                              for n, vs in val.items()},
        "candidates": {n: {"pair_mode": CANDIDATES[n][0], "profiles": CANDIDATES[n][1]} for n in val},
        "stage_wall_s_per_fold": walls}
    write_json(out / "summary.json", summary)
    write_json(out / "selection.json", summary["kfold"])
    write_report(out.name, out.parent)
    return summary


def pool_question_quality(root, folds, selections, out):
    """out/question_quality.json: every fold's dev drafts of B, the chosen C, SG and each quality-pairs
    candidate (C-<name>), pooled and scored paired over all questions (askdraft.quality)."""
    from askdraft import quality
    from askdraft.records import read_drafts

    names = {"B": lambda s: "cot_phaseB", "C": lambda s: f"dpo_phaseC-{s['chosen']}",
             "SG": lambda s: f"dpo_phaseC-{s['chosen']}_sg"}
    for cand, (mode, _) in CANDIDATES.items():
        if mode == "quality" and cand in selections[0]["validation"]:
            names[f"C-{cand}"] = lambda s, cand=cand: f"dpo_phaseC-{cand}"
    rows, files = {}, {}
    for stage, name in names.items():
        paths = [fold_dir(root, f) / "data" / "drafts" / name(selections[f]) / "dev.jsonl" for f in range(folds)]
        if all(p.is_file() for p in paths):
            rows[stage] = [r for p in paths for r in read_drafts(p)]
            files[stage] = [str(p.relative_to(root)) for p in paths]
    if "B" not in rows or len(rows) < 2:
        print("kfold: question quality needs B's and another stage's dev drafts in every fold; not pooled")
        return None
    result = {"drafts": files, **quality.score_stages(rows, quality.build_store())}
    write_json(out / "question_quality.json", result)
    return result


def pool_judges(judges):
    """Judge outcomes of every fold in one win-rate (outcomes per question as the judge wrote them)."""
    outcomes = [q["outcome"] for j in judges for q in j.get("per_question", []) if q.get("outcome") in ("win", "tie", "loss")]
    head = {k: judges[0].get(k) for k in ("judge_model", "mode")}
    for k in ("name_a", "name_b"):  # each fold's own chosen candidate, not the first fold's
        names = [j.get(k) for j in judges]
        head[k] = names[0] if len(set(names)) == 1 else "per fold: " + ", ".join(names)
    r = stats.win_rate(outcomes) if outcomes else {"win_rate": None, "ci_low": None, "ci_high": None, "n": 0}
    return {**head, **r, "folds": len(judges)}


# ---------------------------------------------------------------- CLI

def run(folds=5, root="runs/kfold", results="results", name=None, profile=None, candidates=None,
        parallel=None, gpus=None, val_frac=0.1, seed=1234, base=None, judge_serve=None, threads=None, jobs=None,
        skip=()):
    candidates = list(candidates or CANDIDATES)
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise InputError("--candidates", None, f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    root = Path(root).resolve()  # the folds run with their folder as cwd
    base = Path(base or REPO_ROOT / "models" / "base" / "SmolLM2-135M-Instruct")
    if not (base / "config.json").is_file():
        raise InputError(base, None, "base model directory not found (run `make base`)")
    model = base.name
    name = name or f"{model}-kfold{folds}"
    parallel = parallel or folds
    gpus = [g for g in (gpus or "").split(",") if g]
    threads = threads or max(1, (os.cpu_count() or 2) // parallel)
    base_env = {"PY": sys.executable, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "ASKDRAFT_COMMIT": git_commit()}
    if profile:
        base_env["PROFILE"] = profile
    unknown = [s for s in skip if s not in KFOLD_FINAL or s in ("drafts-c", "eval", "report")]
    if unknown:
        raise InputError("--skip", None, f"cannot skip {unknown}; optional stages: "
                                         f"{[s for s in KFOLD_FINAL if s not in ('drafts-c', 'eval', 'report')]}")
    if jobs:
        base_env["KFOLD_JOBS"] = str(jobs)
    final = [s for s in KFOLD_FINAL if (s != "judge" or judge_serve) and s not in skip]
    if judge_serve:
        base_env["JUDGE_SERVE"] = str(Path(judge_serve).resolve())
    for f in range(folds):
        prepare_fold(root, f, folds, val_frac, seed, base)
    from tqdm import tqdm

    def one(f):
        env = {**base_env, **({"CUDA_VISIBLE_DEVICES": gpus[f % len(gpus)]} if gpus else {})}
        return f, run_fold(root, f, candidates, env, model, final)

    selections, failed = {}, []
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool_:
        jobs = [pool_.submit(one, f) for f in range(folds)]
        for job in tqdm(concurrent.futures.as_completed(jobs), total=folds, desc="folds", unit="fold"):
            try:
                f, sel = job.result()
                selections[f] = sel
                print(f"fold {f}: chosen {sel['chosen']} (validation {json.dumps(sel['validation'])})", flush=True)
            except RuntimeError as e:
                failed.append(str(e))
    if failed:
        raise RuntimeError("; ".join(failed))
    return pool(root, folds, model, Path(results) / name, selections)


def cmd(a):
    s = run(a.folds, a.root, a.results, a.name, a.profile, a.candidates and a.candidates.split(","),
            a.parallel, a.gpus, a.val_frac, a.seed, a.base, a.judge_serve, a.threads, a.jobs,
            [x for x in (a.skip or "").split(",") if x])
    for stage, r in s["stages"].items():
        print(f"{stage}: {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}")
    print(f"-> {Path(a.results) / s['model'] / 'summary.json'}")


def add_cli(sub):
    p = sub.add_parser("kfold", help="k-fold study: the pipeline per fold, phase C chosen on validation, pooled results")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--root", default="runs/kfold", help="the folds' working folders")
    p.add_argument("--results", default="results")
    p.add_argument("--name", help="pooled results folder (default <base>-kfold<K>)")
    p.add_argument("--base", help="base model dir (default models/base/SmolLM2-135M-Instruct)")
    p.add_argument("--profile", help="make PROFILE for every fold (cpu | smoke | gpu | gpu-fast)")
    p.add_argument("--candidates", help=f"phase C candidates, comma-separated (default all: {','.join(CANDIDATES)})")
    p.add_argument("--parallel", type=int, help="folds at once (default all)")
    p.add_argument("--gpus", help="comma-separated GPU ids, dealt to folds round-robin")
    p.add_argument("--threads", type=int, help="CPU threads per fold (default cores / parallel)")
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--jobs", type=int, help="a fold's eval, attribution, judge and quality side by side, this many at once")
    p.add_argument("--skip", help="optional final stages to leave out, comma-separated (e.g. sg,sg-eval)")
    p.add_argument("--judge-serve", help="model dir to serve as the judge (transformers serve) in every fold")
    p.set_defaults(func=cmd)
