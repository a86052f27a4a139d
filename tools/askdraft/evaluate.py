"""`askdraft evaluate` runs lm-eval (its Python API) on one stage's model; `askdraft summarize`
pools every stage's results into results/<model>/summary.json (stages, ablations, attribution,
judge and provenance, as below).

evaluate writes, per task, results/<model>/evals/<stage>.<task>.jsonl (one row per dev
question: gold, prediction, correct 0/1, the model's scores) and <stage>.<task>.json (lm-eval's
aggregated metric and the run's provenance). A task whose .json exists is skipped, so a killed
run resumes; both files are written atomically, the .json last.

summarize reads those files and computes, over the same dev questions:
- stages.<stage>: the stage's headline accuracy: its own-draft task (strategyqa_draft) if
  it was evaluated, else the question-only task (strategyqa); provenance.stage_tasks says which.
- ablations: draft / nodraft / shuffled of the ablation stage (default: the last stage that
  ran all three) and the paired differences draft - nodraft, draft - shuffled, and C - A,
  B - A over the stages' headline accuracies (paired bootstrap CI + McNemar's p, from stats).
- attribution_draft_share and judge from results/<model>/attribution/{before,after}_dpo.json
  and results/<model>/judge.json when they exist (else null).
"""
import datetime
import json
import time
from pathlib import Path

from askdraft import REPO_ROOT, git_commit, models
from askdraft.pipeline import TASK_GROUPS
from askdraft.io import InputError, positive_int, read_jsonl, sha256_file, write_json, write_jsonl
from askdraft.records import read_split

# the task sets: the stage table's lm-eval groups
ABLATIONS = {k: TASK_GROUPS["strategyqa_ablations"][k] for k in ("draft", "nodraft", "shuffled")}
NOCONCLUSION = TASK_GROUPS["strategyqa_ablations"]["noconclusion"]  # own draft, tentative answer removed
ORACLE = TASK_GROUPS["strategyqa_oracle"]
ANSWERED = TASK_GROUPS["strategyqa_answered"]  # sub-questions answered from the BM25 fact store
HEADLINE = ("strategyqa_draft", "strategyqa")  # a stage's accuracy: the first task it ran
STAGE_ORDER = ("base", "A", "B", "C", "SG")
STAGE_DIFFS = (("C", "A"), ("B", "A"))
PACKAGES = ("torch", "transformers", "peft", "trl", "axolotl", "lm_eval", "captum", "datasets")
DEFAULT_DEV = "data/strategyqa_dev.jsonl"


def batch_size_arg(text):
    """argparse type of --batch-size: rows per scoring batch, or lm-eval's own search: "auto" (the
    largest batch the longest requests fit in, found once) or "auto:N" (found again N times as the
    requests, longest first, get shorter)."""
    import argparse
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit() and int(text[5:]) >= 1):
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number >= 1, auto or auto:N") from None


def eval_paths(results, model, stage, task):
    folder = Path(results) / model / "evals"
    return folder / f"{stage}.{task}.jsonl", folder / f"{stage}.{task}.json"


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- evaluate one stage

def device_and_dtype():
    import torch
    if torch.cuda.is_available():
        return "cuda", f"cuda ({torch.cuda.get_device_name()})"
    return "cpu", "cpu"


def float32_head(model):
    """Score in float32 at the output: the LM head's weights and input in float32, so the two
    choices' log-likelihoods do not tie (bf16 logits tied 13-31 times in 289 questions, and
    lm-eval scores a tie as the first choice, "yes")."""
    import torch
    head = model.get_output_embeddings()
    head.float()
    head.register_forward_pre_hook(lambda _m, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))


def per_question(samples, task):
    """One row per doc from lm-eval's logged samples; the metric is the task's first one."""
    rows, seen = [], set()
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc, metric = s["doc"], s["metrics"][0]
        if doc["question"] in seen:
            raise ValueError(f"{task}: question twice in the dev split: {doc['question']!r}")
        seen.add(doc["question"])
        row = {"doc_id": s["doc_id"], "question": doc["question"], "answer": doc["answer"],
               "correct": int(s[metric])}
        if "choices" in doc:  # multiple choice: the summed log-prob of each continuation
            lls = [float(r[0]) for r in s["filtered_resps"]]
            row["pred"] = ("yes", "no")[max(range(len(lls)), key=lls.__getitem__)]
            row["loglik"] = dict(zip(("yes", "no"), lls))
            row["tie"] = int(lls[0] == lls[1])
            if doc.get("draft"):
                row["tentative"] = doc["tentative"]
        else:  # generative: the filtered answer and the raw text
            row["pred"], row["response"] = s["filtered_resps"][0], s["resps"][0][0]
        rows.append(row)
    return rows, metric, samples[0]["filter"]


def evaluate(model_name, stage, base, tasks, adapter=None, drafts=None, dev=DEFAULT_DEV,
             limit=None, results="results", batch_size=8, shuffle_seed=1234, force=False,
             dtype="float32"):
    """Run the missing tasks of one stage in one lm-eval call; returns {task: acc}."""
    def done(task):
        return not force and eval_paths(results, model_name, stage, task)[1].exists()

    for t in [t for t in tasks if done(t)]:
        print(f"skip {stage}.{t}: {eval_paths(results, model_name, stage, t)[1]} exists")
    if all(done(t) for t in tasks):
        return {}
    models.check_dirs(base, adapter)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    if limit:  # the first `limit` dev questions as the split itself: drafts (and the shuffled
        # derangement) then need to cover only those, as `askdraft drafts --limit` writes them
        dev_rows = read_split(dev)[:limit]
        dev = Path(results) / model_name / "evals" / f".dev_first{limit}.jsonl"
        write_jsonl(dev, dev_rows)
    metadata = {"dev": str(Path(dev).resolve()), "shuffle_seed": shuffle_seed}
    if drafts is not None:
        metadata["drafts"] = str(Path(drafts).resolve())
    manager = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata=metadata)
    check_task_names(tasks, manager.all_tasks)
    # loads the datasets, so bad input fails before the model loads; groups become their tasks
    leaves = _leaves(get_task_dict([t for t in tasks if not done(t)], manager))
    todo = {name: task for name, task in leaves.items() if not done(name)}
    if not todo:
        return {}
    device, device_name = device_and_dtype()
    if dtype == "nf4":  # a 7B within an 8 GB card, as the recipes train it: HFLM takes no quantization
        # option of its own (it passes the checkpoint's), so the model comes from askdraft's loader
        model, tok = models.load_model(base, adapter, device, load_in_4bit=True)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    else:
        lm = HFLM(pretrained=str(base), peft=adapter and str(adapter), dtype=dtype, device=device,
                  batch_size=batch_size)
    if dtype != "float32":
        float32_head(lm.model)
    started, t0 = now(), time.time()
    out = lm_eval.simple_evaluate(model=lm, tasks=list(todo.values()),
                                  log_samples=True, task_manager=manager)
    wall = time.time() - t0
    accs = {}
    for task in todo:
        rows, metric, filt = per_question(out["samples"][task], task)
        agg = out["results"][task]
        acc = float(agg[f"{metric},{filt}"])
        mean = sum(r["correct"] for r in rows) / len(rows)
        if abs(mean - acc) > 1e-9:  # our per-question rows must be lm-eval's own numbers
            raise RuntimeError(f"{task}: per-question mean {mean} != lm-eval's {metric} {acc}")
        meta = {"model": model_name, "stage": stage, "task": task, "metric": metric,
                "filter": filt, "acc": acc, "acc_stderr": agg.get(f"{metric}_stderr,{filt}"),
                "n": len(rows), "ties": sum(r.get("tie", 0) for r in rows), "limit": limit, "base": str(base),
                "adapter": adapter and str(adapter), "dev": str(dev),
                "dev_sha256": sha256_file(dev), "drafts": drafts and str(drafts),
                "drafts_sha256": drafts and sha256_file(drafts), "shuffle_seed": shuffle_seed,
                "device": device_name, "dtype": dtype, "batch_size": batch_size,
                "batch_sizes_found": {str(k): v for k, v in lm.batch_sizes.items()} or None,
                "run_wall_s": round(wall, 2), "run_tasks": list(todo), "run_started": started,
                "commit": git_commit(), "lm_eval": lm_eval.__version__}
        jsonl, meta_path = eval_paths(results, model_name, stage, task)
        write_jsonl(jsonl, rows)
        write_json(meta_path, meta)
        accs[task] = acc
        print(f"{stage}.{task}: {metric} {acc:.4f} over {len(rows)} questions -> {jsonl}")
    return accs


def check_task_names(tasks, known):
    """An InputError naming the unknown task(s), the closest known names and this repo's tasks
    (lm-eval itself raises a bare KeyError deep in get_task_dict)."""
    import difflib

    unknown = [t for t in tasks if t not in known]
    if unknown:
        near = {t: difflib.get_close_matches(t, list(known), n=1, cutoff=0.75) for t in unknown}
        hints = "; ".join(f"{t!r}: did you mean {m[0]!r}?" for t, m in near.items() if m)
        ours = sorted(t for t in known if t.startswith("strategyqa"))
        raise InputError("--tasks", None, f"unknown lm-eval task(s) {unknown}" + (f" ({hints})" if hints else "")
                         + f"; this repo's tasks: {ours}")


def _leaves(task_dict):
    """{task name: Task} of lm-eval's (possibly nested, for groups) task dict."""
    out = {}
    for name, task in task_dict.items():
        out.update(_leaves(task) if isinstance(task, dict) else {name: task})
    return out


# ---------------------------------------------------------------- CLI

def add_cli(sub):
    p = sub.add_parser("evaluate", help="lm-eval one stage's model; per-question results")
    p.add_argument("--model-name", required=True, help="results/<model-name>/ (e.g. SmolLM2-135M-Instruct)")
    p.add_argument("--stage", required=True, help="base, A, B, C, SG, ...")
    p.add_argument("--base", required=True, type=Path, help="base model directory")
    p.add_argument("--adapter", type=Path, help="PEFT adapter directory (default: none)")
    p.add_argument("--drafts", type=Path, help="drafts JSONL of this model (draft tasks)")
    p.add_argument("--dev", type=Path, default=Path(DEFAULT_DEV))
    p.add_argument("--tasks", required=True, type=lambda s: [t for t in s.split(",") if t],
                   help="comma-separated, e.g. strategyqa,strategyqa_draft")
    p.add_argument("--limit", type=positive_int, help="first N dev questions only (tests, smoke runs)")
    p.add_argument("--batch-size", type=batch_size_arg, default=8,
                   help="rows per scoring batch, or auto / auto:N (lm-eval's search for the largest that fits)")
    p.add_argument("--shuffle-seed", type=int, default=1234)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--force", action="store_true", help="re-run tasks that already have results")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "nf4"),
                   help="model weights (default float32; nf4: a 4-bit base computing in bf16); the LM head "
                        "scores in float32 either way")
    p.set_defaults(func=_evaluate_cmd)

    p = sub.add_parser("summarize", help="pool the evaluations into results/<model>/summary.json")
    p.add_argument("--model-name", required=True)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--ablation-stage", help="stage whose draft ablations to report "
                   "(default: the last one that ran all three)")
    p.add_argument("--attribution-dir", type=Path,
                   help="folder with before_dpo.json / after_dpo.json (default results/<model>/attribution)")
    p.add_argument("--judge", type=Path, help="judge results JSON (default results/<model>/judge.json)")
    p.set_defaults(func=_summarize_cmd)


def _evaluate_cmd(a):
    evaluate(a.model_name, a.stage, a.base, a.tasks, a.adapter, a.drafts, a.dev, a.limit,
             a.results, a.batch_size, a.shuffle_seed, a.force, a.dtype)
    return 0


def _summarize_cmd(a):
    from askdraft.summary import summarize
    s = summarize(a.model_name, a.results, a.ablation_stage, a.attribution_dir, a.judge)
    for stage, r in s["stages"].items():
        print(f"{stage}: {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}")
    print(f"-> {Path(a.results) / a.model_name / 'summary.json'}")
    return 0
