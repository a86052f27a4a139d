"""The 7B path's make variables: gpu-7b-fast loads every inference stage's model in NF4 (LOAD_4BIT),
DRAFT_ROWS / EVAL_ROWS / ATTR_LIMIT cut a subset run, BASE_SRC=random:llama2-7b builds the base."""
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ["base", "drafts", "drafts-c", "eval", "attribution"]


def planned(*args):
    return subprocess.run(["make", "-n", "-B", "--no-print-directory", *STAGES, "PY=python3", *args], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")


def lines(out, word):
    return [line for line in out.splitlines() if word in line]


def test_gpu_7b_fast_loads_inference_models_in_nf4():
    out = planned("PROFILE=gpu-7b-fast", "BASE_NAME=llama2-7b-shape", "BASE_SRC=random:llama2-7b")
    assert " ".join(lines(out, "base-model")[0].split()).endswith("base-model random:llama2-7b --name llama2-7b-shape --out-root models/base/")
    drafts, evals, attr = lines(out, "askdraft.cli drafts"), lines(out, "askdraft.cli evaluate"), lines(out, "attention_tools")
    assert len(drafts) == 2 and all("--load-in-4bit" in line for line in drafts)
    assert len(evals) == 4 and all("--dtype nf4" in line for line in evals)
    assert len(attr) == 2 and all("--load-in-4bit --internal-batch-size 2" in line for line in attr)
    plain = planned("PROFILE=cpu")
    assert "--load-in-4bit" not in plain and "nf4" not in plain
    assert "--dtype nf4" in planned("PROFILE=cpu", "LOAD_4BIT=1")


def test_subset_variables_reach_their_stages():
    out = planned("PROFILE=gpu-7b-fast", "DRAFT_ROWS=48", "EVAL_ROWS=24", "ATTR_LIMIT=3")
    assert all("--limit 48 " in line for line in lines(out, "askdraft.cli drafts"))
    assert all("--limit 24 " in line for line in lines(out, "askdraft.cli evaluate"))
    assert all("--limit 3 " in line for line in lines(out, "attention_tools"))
    full = planned("PROFILE=gpu-7b-fast")
    assert not any("--limit" in line for line in lines(full, "askdraft.cli drafts") + lines(full, "askdraft.cli evaluate"))
    smoke = planned("PROFILE=smoke")  # the smoke profile's own subset stays the default
    assert all("--limit 32 " in line for line in lines(smoke, "askdraft.cli drafts"))


@pytest.mark.slow
def test_nf4_eval_of_a_random_base_is_marked_not_meaningful(tmp_path, tiny_llama_dir):
    """askdraft evaluate --dtype nf4 (LOAD_4BIT) scores a random base in 4 bits (bitsandbytes' CPU path),
    and summarize + report mark every number of a random-weight model as not meaningful."""
    from conftest import strategyqa_split

    from askdraft import evaluate, report, summary
    from askdraft.random_base import write_random_model

    base = write_random_model(tmp_path / "rand", "tiny", tiny_llama_dir)
    results = tmp_path / "results"
    evaluate.evaluate("rand", "base", base, ["strategyqa"], dev=strategyqa_split() / "strategyqa_dev.jsonl",
                      limit=6, results=results, batch_size=4, dtype="nf4")
    meta = json.loads(evaluate.eval_paths(results, "rand", "base", "strategyqa")[1].read_text())
    assert meta["dtype"] == "nf4" and meta["n"] == 6
    s = summary.summarize("rand", results)
    assert "Random weights" in s["random_weights"]
    text = report.write_report("rand", results).read_text()
    assert "**Not results.** Random weights" in text
