"""tools/run_stages.py: make decides what is stale; the pipeline's Python lines run in the runner's
own process (proved by the pid they record), other lines in bash; wall times recorded; a failing
line stops the run with the stage's name and a non-zero exit; a re-run skips finished stages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import run_stages  # noqa: E402

MAKEFILE = """\
PY ?= python3
one: out/one.txt
out/one.txt:
\tmkdir -p out
\t$(PY) record_pid.py out/one.txt  # a comment
two: out/two.txt
out/two.txt: out/one.txt
\t$(PY) -m json.tool out/one.json out/two.json || true
\tif [ -f out/one.txt ]; then cp out/one.txt $@; fi
broken:
\t$(PY) record_pid.py out/broken.txt --fail
recipe:
\t$(PY) -m askdraft.cli recipe $(RECIPES)/phase_a.yaml --set base_model=models/x -o out/phase_a.yaml
bad-recipe:
\t$(PY) -m askdraft.cli recipe $(RECIPES)/no_such_phase.yaml -o out/bad.yaml
"""
RECORD_PID = """\
import os, sys
open(sys.argv[1], "w").write(str(os.getpid()))
if "--fail" in sys.argv:
    sys.exit(3)
"""


@pytest.mark.parametrize("line, argv", [
    ("PY -m askdraft.cli pairs --mode draft -o data/pairs.jsonl", ["-m", "askdraft.cli", "pairs", "--mode", "draft",
                                                                  "-o", "data/pairs.jsonl"]),
    ("PY tools/attention_tools.py --base 'a b'  # why", ["tools/attention_tools.py", "--base", "a b"]),
    ("PY -m askdraft.cli judge --out x || true", None),
    ("PY tools/x.py > log", None),
    ("python3 tools/x.py", None),  # another interpreter
    ("touch models/merged/config.json", None),
    ("if [ -z \"$X\" ]; then echo skip; fi", None),
    ("PY -c 'print(1)'", None),
])
def test_python_argv(line, argv):
    assert run_stages.python_argv(line, "PY") == argv


def run(tmp_path, *args):
    env = {**os.environ, "PY": sys.executable, "MODEL_NAME": "m", "RECIPES": str(REPO / "recipes")}
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile",
                             str(tmp_path / "Makefile"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_stages_in_process_skip_and_fail(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "record_pid.py").write_text(RECORD_PID)
    proc = run(tmp_path, "one", "two")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert (tmp_path / "out/one.txt").read_text() == str(proc.pid)  # in the runner's process
    assert (tmp_path / "out/two.txt").read_text() == str(proc.pid)  # copied by the bash line
    times = json.loads((tmp_path / "results/m/wall_times.json").read_text())
    assert set(times) == {"one", "two"} and all(t >= 0 for t in times.values())

    again = run(tmp_path, "one", "two")
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and out.count("up to date") == 2, out

    isolated = run(tmp_path, "broken", "--isolate")
    out, _ = isolated.communicate(timeout=120)
    assert isolated.returncode == 3, out
    assert "stage broken failed" in out
    assert (tmp_path / "out/broken.txt").read_text() != str(isolated.pid)  # its own process

    cli = run(tmp_path, "recipe", "bad-recipe")  # askdraft's own CLI, in process: its exit codes
    out, _ = cli.communicate(timeout=120)
    assert "base_model: models/x" in (tmp_path / "out/phase_a.yaml").read_text()
    assert cli.returncode == 2 and "no_such_phase.yaml" in out and "stage bad-recipe failed (exit 2)" in out, out
    assert not (tmp_path / "out/bad.yaml").exists()

    failing = run(tmp_path, "broken", "one")
    out, _ = failing.communicate(timeout=120)
    assert failing.returncode == 3, out
    assert "run_stages: stage broken failed (exit 3)" in out and "== one" not in out


def test_undo_axolotl_attention_patch(tiny_llama_dir):
    """Axolotl's LoRA kernels rewrite LlamaAttention.forward for the whole process; after an
    in-process line the runner compiles the original back, so a plain model of a later stage runs
    (on the H200 the drafts stage failed on the missing apply_qkv) and the next training patches again."""
    import torch
    from axolotl.monkeypatch.lora_kernels import patch_self_attn_lora
    from axolotl.utils.dict import DictDefault
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaAttention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        before = model(ids).logits
    original = LlamaAttention.forward
    patch_self_attn_lora(DictDefault(base_model=str(tiny_llama_dir)))
    try:
        assert LlamaAttention.forward is not original
        with pytest.raises(AttributeError, match="apply_qkv"):
            model(ids)
    finally:
        run_stages.undo_class_patches()
    assert "_original_forward" not in LlamaAttention.__dict__
    assert LlamaAttention.forward.__name__ == "forward"
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    patch_self_attn_lora(DictDefault(base_model=str(tiny_llama_dir)))  # patches again, not "already patched"
    try:
        assert LlamaAttention.forward is not original and "_original_forward" in LlamaAttention.__dict__
    finally:
        run_stages.undo_class_patches()


SIBLINGS_MAKEFILE = """\
PY ?= python3
STAMP = $(PY) -c 'import sys, time; s = time.time(); time.sleep(1.5); open(sys.argv[1], "w").write(f"{s} {time.time()}"); sys.exit(int(sys.argv[2]))'
drafts-c: out/drafts.txt
out/drafts.txt:
\tmkdir -p out && touch $@
eval: out/eval.txt
out/eval.txt: out/drafts.txt
\t$(STAMP) $@ 0
attribution: out/attribution.txt
out/attribution.txt: out/drafts.txt
\t$(STAMP) $@ $(if $(FAIL_ATTRIBUTION),1,0)
judge: out/judge.txt
out/judge.txt: out/drafts.txt
\t$(STAMP) $@ 0
report: out/report.txt
out/report.txt: out/eval.txt out/attribution.txt out/judge.txt
\tcat $^ > $@
"""
SIBLING_STAGES = ("drafts-c", "eval", "attribution", "judge", "report")


def intervals(tmp_path):
    return [tuple(map(float, (tmp_path / f"out/{s}.txt").read_text().split())) for s in ("eval", "attribution", "judge")]


def test_jobs_runs_siblings_side_by_side(tmp_path):
    (tmp_path / "Makefile").write_text(SIBLINGS_MAKEFILE)
    proc = run(tmp_path, "--jobs", "3", *SIBLING_STAGES)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    spans = intervals(tmp_path)
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # all three at once
    assert (tmp_path / "out/report.txt").exists()
    times = json.loads((tmp_path / "results/m/wall_times.json").read_text())
    assert set(times) == set(SIBLING_STAGES) and all(times[s] >= 1.5 for s in ("eval", "attribution", "judge"))
    assert (tmp_path / "runs/stage-judge.log").exists()  # the children's output

    again = run(tmp_path, "--jobs", "3", *SIBLING_STAGES)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and out.count("up to date") == 5, out


def test_jobs_1_runs_siblings_one_by_one(tmp_path):
    (tmp_path / "Makefile").write_text(SIBLINGS_MAKEFILE)
    proc = run(tmp_path, "--jobs", "1", *SIBLING_STAGES)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    (s1, e1), (s2, e2), (s3, e3) = intervals(tmp_path)
    assert e1 <= s2 and e2 <= s3
    assert "side by side" not in out


def test_jobs_failing_sibling_fails_the_run(tmp_path):
    (tmp_path / "Makefile").write_text(SIBLINGS_MAKEFILE)
    env = {**os.environ, "PY": sys.executable, "MODEL_NAME": "m", "FAIL_ATTRIBUTION": "1", "PROFILE": "p"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "run_stages.py"), "--makefile",
                           str(tmp_path / "Makefile"), "--jobs", "3", *SIBLING_STAGES], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout
    assert "run_stages: stage attribution failed (exit 1)" in proc.stdout
    assert (tmp_path / "out/eval.txt").exists() and (tmp_path / "out/judge.txt").exists()
    assert (tmp_path / "runs/p/stage-attribution.log").exists()
    assert "== report" not in proc.stdout and not (tmp_path / "out/report.txt").exists()
    times = json.loads((tmp_path / "results/m/wall_times.json").read_text())
    assert set(times) == {"drafts-c", "eval", "judge"}
