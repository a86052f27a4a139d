"""The strategyqa* lm-eval tasks, `askdraft evaluate / summarize / report` and DPO_eval.ipynb.

The slow tests run the real `lm_eval` CLI once (module fixture) on CPU: SmolLM2-135M-Instruct
+ a random LoRA adapter, 8 questions of the real dev split, a crafted drafts file. Its numbers
are checked against plain transformers + peft, then the same model goes through evaluate.py,
summarize, the report and the notebook.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from askdraft import REPO_ROOT, evaluate, report, stats, summary, templates
from askdraft.io import InputError, read_jsonl, sha256_file, write_json, write_jsonl

TASKS = ("strategyqa", "strategyqa_nodraft", "strategyqa_draft", "strategyqa_shuffleddraft",
         "strategyqa_draft_noconclusion", "strategyqa_teacher_gold", "strategyqa_teacher_flipped",
         "strategyqa_teacher_noconclusion", "strategyqa_teacher_shuffled", "strategyqa_emptydraft")
# One CPU thread everywhere: on a shared 2-core machine two OpenMP threads wait on each other
# (measured: a forward pass 9x slower with 2 threads than with 1 while other jobs run).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
LM_EVAL = Path(sys.executable).parent / "lm_eval"
N = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """The real split, built by `askdraft data` (offline: bigbench from PyPI, cached)."""
    out = tmp_path_factory.mktemp("data")
    r = subprocess.run([sys.executable, "-m", "askdraft.cli", "data", "--no-hub", "--out", str(out)],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def make_inputs(folder, real_data, n=N):
    """dev: the first n questions of the real dev split; drafts: one distinct draft each."""
    dev = read_jsonl(real_data / "strategyqa_dev.jsonl", required=("question", "teacher_final"),
                     allow_extra=True)[:n]
    write_jsonl(folder / "dev.jsonl", dev)
    drafts = [{"question": r["question"], "draft": f"What is known? {r['teacher_cot']}\n"
               f"Tentative answer: {r['teacher_final']}", "tentative": r["teacher_final"],
               "answer": r["teacher_final"]} for r in dev]
    write_jsonl(folder / "drafts.jsonl", drafts)
    return folder / "dev.jsonl", folder / "drafts.jsonl"


def make_adapter(base, out):
    """A LoRA adapter whose B matrices are random (peft inits them to zero: a no-op); at this
    scale it flips some of the base model's all-"no" answers to "yes"."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(out)
    return out


def lm_eval_cli(*args):
    return subprocess.run([str(LM_EVAL), *map(str, args)], cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def run(smollm2_dir, real_data, tmp_path_factory):
    """One `lm_eval` CLI run of the four tasks: {task: {question: sample}} + the results JSON."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    dev, drafts = make_inputs(tmp, real_data)
    adapter = make_adapter(smollm2_dir, tmp / "adapter")
    meta = json.dumps({"dev": str(dev), "drafts": str(drafts)})
    r = lm_eval_cli("--model", "hf", "--model_args", f"pretrained={smollm2_dir},peft={adapter},dtype=float32",
                    "--include_path", "lm_eval_tasks", "--tasks", ",".join(TASKS), "--limit", N,
                    "--metadata", meta, "--device", "cpu", "--batch_size", 8,
                    "--output_path", tmp / "out", "--log_samples")
    assert r.returncode == 0, r.stderr[-3000:]
    (results_file,) = (tmp / "out").rglob("results_*.json")
    samples = {}
    for task in TASKS:
        (f,) = (tmp / "out").rglob(f"samples_{task}_[0-9]*.jsonl")
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        samples[task] = {s["doc"]["question"]: s for s in rows}
    return dict(data=real_data, base=smollm2_dir, adapter=adapter, dev=dev, drafts=drafts, tmp=tmp,
                samples=samples, results=json.loads(results_file.read_text())["results"])


def own_drafts(path):
    return {d["question"]: d["draft"] for d in read_jsonl(path, required=("question", "draft"), allow_extra=True)}


def logliks(model, tok, prompt):
    """Summed log-prob of each answer continuation after `prompt`, with plain transformers
    (both continuations in one right-padded batch: padding after a sequence cannot change it)."""
    import torch
    ctx = tok(prompt, add_special_tokens=False).input_ids
    fulls = [tok(prompt + templates.answer_completion(a), add_special_tokens=False).input_ids
             for a in templates.ANSWERS]
    assert all(f[:len(ctx)] == ctx for f in fulls), "a continuation changed the prompt's tokens"
    width = max(map(len, fulls))
    ids = torch.tensor([f + [0] * (width - len(f)) for f in fulls])
    mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in fulls])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    return [sum(logp[b, i - 1, f[i]].item() for i in range(len(ctx), len(f))) for b, f in enumerate(fulls)]


# ---------------------------------------------------------------- (a) lm-eval vs transformers

@pytest.mark.slow
def test_lm_eval_matches_independent_transformers_computation(run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run["base"])
    base = AutoModelForCausalLM.from_pretrained(run["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run["adapter"]).eval()
    own, cache, choices = own_drafts(run["drafts"]), {}, set()
    dev = read_jsonl(run["dev"], required=("question",), allow_extra=True)
    gold = {r["question"]: r["teacher_final"] for r in dev}
    teacher = {r["question"]: r["teacher_cot"] for r in dev}
    flip = {"yes": "no", "no": "yes"}
    for task in TASKS:
        samples = run["samples"][task]
        assert set(samples) == set(gold), task
        correct = []
        for q, s in samples.items():
            # each variant's draft written out by hand (make_inputs' drafts end in one tentative line)
            draft = {"strategyqa_draft": own[q], "strategyqa_shuffleddraft": s["doc"]["draft"],
                     "strategyqa_draft_noconclusion": own[q].rsplit("\nTentative answer:", 1)[0],
                     "strategyqa_teacher_gold": f"{teacher[q]}\nTentative answer: {gold[q]}",
                     "strategyqa_teacher_flipped": f"{teacher[q]}\nTentative answer: {flip[gold[q]]}",
                     "strategyqa_teacher_noconclusion": teacher[q], "strategyqa_emptydraft": "",
                     "strategyqa_teacher_shuffled": s["doc"]["draft"]}.get(task)
            if task == "strategyqa_teacher_shuffled":
                assert draft != teacher[q] and draft in teacher.values()
            prompt = f"Question: {q}" + (f" Student draft: {draft}" if draft is not None else "") + "\nFinal answer:"
            assert s["arguments"]["gen_args_0"]["arg_0"] == prompt  # lm-eval saw the template's prompt
            if prompt not in cache:  # strategyqa and strategyqa_nodraft share their prompts
                cache[prompt] = logliks(model, tok, prompt)
            mine = cache[prompt]
            theirs = [float(r[0]) for r in s["filtered_resps"]]
            assert mine == pytest.approx(theirs, abs=2e-3), (task, q)
            choice = templates.ANSWERS[mine.index(max(mine))]
            assert choice == templates.ANSWERS[theirs.index(max(theirs))], (task, q)
            correct.append(int(choice == gold[q]))
            choices.add(choice)
            assert float(s["acc"]) == correct[-1]
        assert sum(correct) / N == pytest.approx(run["results"][task]["acc,none"]), task
    assert choices == {"yes", "no"}, "all answers alike: the choice comparison would prove little"
    # the adapter is applied, not a no-op: the base model alone scores differently
    q = next(iter(gold))
    with model.disable_adapter():
        plain = logliks(model, tok, templates.answer_prompt(q))
    assert max(abs(a - b) for a, b in zip(plain, logliks(model, tok, templates.answer_prompt(q)))) > 1e-2


# ---------------------------------------------------------------- (b) errors, (c) shuffle

@pytest.mark.slow
def test_missing_draft_names_the_drafts_file(tmp_path, tiny_llama_dir, real_data):
    dev, drafts = make_inputs(tmp_path, real_data)
    rows = read_jsonl(drafts, required=("question",), allow_extra=True)
    write_jsonl(drafts, rows[:-1])  # the last dev question has no draft
    with pytest.raises(InputError, match=r"drafts\.jsonl.*1 dev question\(s\) have no draft"):
        evaluate.evaluate("m", "C", tiny_llama_dir, ["strategyqa_draft"], drafts=drafts, dev=dev,
                          results=tmp_path / "results")
    with pytest.raises(InputError, match=r"needs the drafts file.*--metadata"):
        evaluate.evaluate("m", "C", tiny_llama_dir, ["strategyqa_shuffleddraft"], dev=dev,
                          results=tmp_path / "results")
    assert not (tmp_path / "results").exists()  # nothing half-written


@pytest.mark.slow
def test_lm_eval_cli_reports_missing_draft(tmp_path, tiny_llama_dir, real_data):
    dev, drafts = make_inputs(tmp_path, real_data)
    write_jsonl(drafts, read_jsonl(drafts, required=("question",), allow_extra=True)[1:])
    r = lm_eval_cli("--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}", "--include_path",
                    "lm_eval_tasks", "--tasks", "strategyqa_draft", "--device", "cpu",
                    "--metadata", json.dumps({"dev": str(dev), "drafts": str(drafts)}))
    assert r.returncode != 0
    assert f"{drafts}: 1 dev question(s) have no draft" in r.stderr


@pytest.mark.slow
def test_shuffled_task_never_gives_a_question_its_own_draft(run):
    own = own_drafts(run["drafts"])
    given = {q: s["doc"]["draft"] for q, s in run["samples"]["strategyqa_shuffleddraft"].items()}
    assert all(given[q] != own[q] for q in given)
    assert sorted(given.values()) == sorted(own.values())  # a permutation of the same drafts
    assert all(s["doc"]["draft"] == own[q] for q, s in run["samples"]["strategyqa_draft"].items())


# ---------------------------------------------------------------- (d) evaluate + summarize

@pytest.fixture(scope="module")
def evaluated(run):
    """Stage C (base + adapter, the four tasks) and stage A (base alone) through evaluate.py."""
    results = run["tmp"] / "results"
    common = dict(dev=run["dev"], limit=N, results=results)
    evaluate.evaluate("smol", "C", run["base"], list(TASKS), adapter=run["adapter"], drafts=run["drafts"], **common)
    evaluate.evaluate("smol", "A", run["base"], ["strategyqa"], **common)
    return results


def _correct(results, stage, task):
    return {r["question"]: r["correct"] for r in
            read_jsonl(evaluate.eval_paths(results, "smol", stage, task)[0], required=("question",), allow_extra=True)}


@pytest.mark.slow
def test_evaluate_per_question_files_match_lm_eval_cli(run, evaluated):
    for task in TASKS:
        jsonl, meta_path = evaluate.eval_paths(evaluated, "smol", "C", task)
        meta = json.loads(meta_path.read_text())
        rows = read_jsonl(jsonl, required=("question", "correct", "pred", "loglik"), allow_extra=True)
        assert len(rows) == meta["n"] == N
        assert sum(r["correct"] for r in rows) / N == pytest.approx(meta["acc"])
        assert meta["acc"] == pytest.approx(run["results"][task]["acc,none"])  # same as the CLI
        for r in rows:
            s = run["samples"][task][r["question"]]
            assert r["correct"] == float(s["acc"])
            theirs = [float(x[0]) for x in s["filtered_resps"]]
            assert [r["loglik"]["yes"], r["loglik"]["no"]] == pytest.approx(theirs, abs=1e-4)
    # resume: a second call skips every finished task and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in (evaluated / "smol" / "evals").iterdir()}
    assert evaluate.evaluate("smol", "C", run["base"], list(TASKS), adapter=run["adapter"], drafts=run["drafts"],
                             dev=run["dev"], limit=N, results=evaluated) == {}
    assert before == {p: p.stat().st_mtime_ns for p in (evaluated / "smol" / "evals").iterdir()}


@pytest.mark.slow
def test_summary_shape_and_paired_stats(run, evaluated):
    s = summary.summarize("smol", evaluated, data_dir=run["data"])
    dev = read_jsonl(evaluated.parent / "dev.jsonl", required=("question",), allow_extra=True)
    dev_order = [r["question"] for r in dev]
    vec = lambda stage, task: [_correct(evaluated, stage, task)[q] for q in dev_order]  # noqa: E731
    assert s == json.loads((evaluated / "smol" / "summary.json").read_text())
    assert {"model", "device", "date", "commit", "stages", "ablations", "attribution_draft_share",
            "judge", "provenance"} <= set(s)
    assert list(s["stages"]) == ["A", "C"] and s["device"] == "cpu"
    assert s["provenance"]["stage_tasks"] == {"A": "strategyqa", "C": "strategyqa_draft"}
    assert s["attribution_draft_share"] == {"before_dpo": None, "after_dpo": None} and s["judge"] is None
    assert set(s["ablations"]) == {"draft", "nodraft", "shuffled", "noconclusion", "draft_minus_nodraft",
                                   "draft_minus_shuffled", "noconclusion_minus_nodraft", "overrides",
                                   "C_minus_A", "B_minus_A"}
    # the final answer against the draft's tentative one, counted by hand from the per-question rows
    rows = read_jsonl(evaluate.eval_paths(evaluated, "smol", "C", "strategyqa_draft")[0], required=("question",), allow_extra=True)
    assert all(r["tentative"] == r["answer"] for r in rows)  # make_inputs' drafts state the gold answer
    o = s["ablations"]["overrides"]
    assert o["overrides_wrong_tentative"] == {"share": None, "n": 0}
    assert o["keeps_right_tentative"] == {"share": sum(r["correct"] for r in rows) / len(rows), "n": len(rows)}
    assert s["oracle"]["stage"] == "C" and s["ties"] == {}
    for k, task in evaluate.ORACLE.items():
        assert s["oracle"][k]["accuracy"] == stats.accuracy(vec("C", task))["accuracy"]
        assert s["oracle"][k]["minus_nodraft"]["diff"] == pytest.approx(
            stats.paired_difference(vec("C", task), vec("C", "strategyqa_nodraft"))["diff"])
    assert s["ablations"]["B_minus_A"] is None
    for key in ("accuracy", "ci_low", "ci_high", "n"):
        assert key in s["stages"]["C"] and key in s["ablations"]["shuffled"]
    assert s["stages"]["C"]["accuracy"] == stats.accuracy(vec("C", "strategyqa_draft"))["accuracy"]
    for key, (one, two) in {"draft_minus_nodraft": (("C", "strategyqa_draft"), ("C", "strategyqa_nodraft")),
                            "draft_minus_shuffled": (("C", "strategyqa_draft"), ("C", "strategyqa_shuffleddraft")),
                            "C_minus_A": (("C", "strategyqa_draft"), ("A", "strategyqa"))}.items():
        direct = stats.paired_difference(vec(*one), vec(*two))
        for k in ("diff", "ci_low", "ci_high", "mcnemar_p", "n"):
            assert s["ablations"][key][k] == pytest.approx(direct[k]), (key, k)
    prov = s["provenance"]
    assert prov["packages"]["lm_eval"] == "0.4.11" and "recipes/phase_a.yaml" in prov["recipes_sha256"]
    assert prov["data_sha256"]["data/strategyqa_dev.jsonl"] == sha256_file(run["data"] / "strategyqa_dev.jsonl")
    assert prov["evals"]["C.strategyqa_draft"]["dev_sha256"] == sha256_file(run["dev"])
    assert prov["evals"]["C.strategyqa_draft"]["drafts_sha256"] == sha256_file(run["drafts"])
    assert set(prov["eval_wall_s"]) == {"A", "C"}


# ---------------------------------------------------------------- (e) report + notebook

def execute_notebook(model, results):
    import nbclient
    import nbformat
    nb = nbformat.read(REPO_ROOT / "DPO_eval.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    os.environ.update(ASKDRAFT_MODEL=model, ASKDRAFT_RESULTS=str(results))
    try:
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    finally:
        del os.environ["ASKDRAFT_MODEL"], os.environ["ASKDRAFT_RESULTS"]
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
def test_report_and_notebook_on_real_results(evaluated):
    summary.summarize("smol", evaluated)
    md = report.write_report("smol", evaluated).read_text()
    root = evaluated / "smol"
    for png in ("accuracy_by_stage.png", "ablations.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert not (root / "judge.png").exists() and "Judge: not run." in md
    s = json.loads((root / "summary.json").read_text())
    assert f"{100 * s['stages']['C']['accuracy']:.1f} %" in md and s["commit"] in md
    outputs = execute_notebook("smol", evaluated)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # stages, ablations, oracle
    text = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "draft − nodraft" in text and "not run" in text


def test_summary_and_report_with_attribution_and_judge(tmp_path):
    """Crafted eval files (as evaluate writes them) + attribution and judge JSONs: no model."""
    qs = [f"Question {i}?" for i in range(20)]
    for stage, task, hits in (("A", "strategyqa", 10), ("B", "strategyqa_draft", 13), ("C", "strategyqa_draft", 15),
                              ("C", "strategyqa_nodraft", 11), ("C", "strategyqa_shuffleddraft", 9)):
        jsonl, meta = evaluate.eval_paths(tmp_path, "m", stage, task)
        write_jsonl(jsonl, [{"question": q, "correct": int(i < hits)} for i, q in enumerate(qs)])
        write_json(meta, {"stage": stage, "task": task, "acc": hits / 20, "n": 20, "base": "models/base/m",
                          "adapter": f"models/{stage}", "dev_sha256": "0" * 64, "drafts_sha256": None,
                          "device": "cpu", "run_wall_s": 1.0, "run_started": f"t-{stage}", "commit": "c" * 40})
    write_json(tmp_path / "m" / "attribution" / "after_dpo.json",
               {"mean_share": 0.25, "ci_low": 0.2, "ci_high": 0.3, "n": 20, "per_question": []})
    write_json(tmp_path / "m" / "judge.json", {"judge_model": "judge-x", "name_a": "C", "name_b": "B",
                                               **stats.win_rate(["win"] * 12 + ["tie"] * 4 + ["loss"] * 4)})
    s = summary.summarize("m", tmp_path)
    assert s["ablations"]["B_minus_A"]["diff"] == pytest.approx(0.15)
    assert s["attribution_draft_share"]["before_dpo"] is None
    assert s["attribution_draft_share"]["after_dpo"]["share"] == 0.25
    assert s["judge"]["win_rate"] == pytest.approx(0.7) and s["judge"]["judge_model"] == "judge-x"
    md = report.write_report("m", tmp_path).read_text()
    assert "25.0 %" in md and "judge-x" in md and "70.0 %" in md and "| before dpo | not run" in md
    for png in ("accuracy_by_stage.png", "ablations.png", "attribution.png", "judge.png"):
        assert (tmp_path / "m" / png).stat().st_size > 1000
    with pytest.raises(InputError, match="no evaluation results"):
        summary.summarize("other", tmp_path)


# ---------------------------------------------------------------- (f) tie-free scoring

def test_float32_head_scores_a_bf16_model_in_float32(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        hidden = model.model(input_ids=ids).last_hidden_state
        evaluate.float32_head(model)
        fixed = model(input_ids=ids).logits
    assert plain.dtype == torch.bfloat16 and fixed.dtype == torch.float32
    # the float32 head on the bf16 body's hidden states, computed by hand
    by_hand = hidden.float() @ model.get_output_embeddings().weight.float().T
    assert torch.allclose(fixed, by_hand, atol=1e-5)
    # bf16 logits have ~3 significant digits: distinct float32 values collapse onto one bf16 value
    assert plain.float().unique().numel() < fixed.unique().numel()


@pytest.mark.slow
def test_bf16_evaluate_counts_ties_and_scores_through_the_float32_head(tmp_path, tiny_llama_dir, real_data):
    dev, _ = make_inputs(tmp_path, real_data)
    evaluate.evaluate("t", "A", tiny_llama_dir, ["strategyqa"], dev=dev, results=tmp_path / "r", dtype="bfloat16")
    jsonl, meta_path = evaluate.eval_paths(tmp_path / "r", "t", "A", "strategyqa")
    meta = json.loads(meta_path.read_text())
    rows = read_jsonl(jsonl, required=("question", "loglik", "tie"), allow_extra=True)
    assert meta["dtype"] == "bfloat16" and meta["ties"] == sum(r["tie"] for r in rows) == 0
    assert all(r["tie"] == int(r["loglik"]["yes"] == r["loglik"]["no"]) for r in rows)
    # the scores are not bf16-rounded: their float32 values are not all representable in bf16
    import torch
    lls = torch.tensor([r["loglik"][a] for r in rows for a in ("yes", "no")])
    assert (lls.to(torch.bfloat16).float() != lls).any()


def test_batch_size_takes_lm_evals_auto_forms():
    import argparse
    assert [evaluate.batch_size_arg(t) for t in ("4", "auto", "auto:3")] == [4, "auto", "auto:3"]
    for bad in ("0", "auto:0", "auto:", "big", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or auto:N"):
            evaluate.batch_size_arg(bad)


@pytest.mark.slow
def test_auto_batch_size_scores_what_a_fixed_batch_scores(tmp_path, tiny_llama_dir, real_data):
    """--batch-size auto:2: lm-eval finds the batch itself (twice, as requests get shorter); the
    per-question scores are those of a fixed batch, and the meta says what it found."""
    dev, _ = make_inputs(tmp_path, real_data)
    for batch, out in ((8, "fixed"), ("auto:2", "auto")):
        evaluate.evaluate("t", "A", tiny_llama_dir, ["strategyqa"], dev=dev, results=tmp_path / out, batch_size=batch)
    rows = {out: read_jsonl(evaluate.eval_paths(tmp_path / out, "t", "A", "strategyqa")[0],
                            required=("question", "loglik"), allow_extra=True) for out in ("fixed", "auto")}
    assert [r["question"] for r in rows["auto"]] == [r["question"] for r in rows["fixed"]]
    for a, f in zip(rows["auto"], rows["fixed"]):
        assert a["loglik"]["yes"] == pytest.approx(f["loglik"]["yes"], abs=1e-4) and a["pred"] == f["pred"]
    meta = json.loads(evaluate.eval_paths(tmp_path / "auto", "t", "A", "strategyqa")[1].read_text())
    assert meta["batch_size"] == "auto:2" and meta["batch_sizes_found"] and all(
        b >= 1 for b in meta["batch_sizes_found"].values())
    fixed = json.loads(evaluate.eval_paths(tmp_path / "fixed", "t", "A", "strategyqa")[1].read_text())
    assert fixed["batch_sizes_found"] is None
