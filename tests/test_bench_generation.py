"""`askdraft bench generation` (tools/askdraft/bench/generation.py) on a tiny Llama on CPU."""
import json
import sys

from askdraft import REPO_ROOT, cli, drafts, templates
from askdraft.bench import generation


def test_prompts_are_real_questions_with_teacher_drafts():
    rows = generation.prompts(3)
    for question, prompt in rows:
        assert prompt.startswith(templates.answer_prompt(question, "x").split("x")[0][:10])
        assert question in prompt and "Tentative answer:" in prompt and prompt.rstrip().endswith("Final answer:")


def test_tiny_llama_cpu(tiny_llama_dir, tmp_path, one_thread):
    out = tmp_path / "gen.json"
    assert cli.main(["bench", "generation", "--model", str(tiny_llama_dir), "--batch-sizes", "2,3", "--continuous", "4",
                     "--cuda-graphs", "--identity-rows", "3", "--cache-tokens", "128", "--new-tokens", "5", "--batches", "2",
                     "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["commit"] and report["schema"] == 1
    assert [(r["engine"], r["batch_size"]) for r in report["rows"]] == [
        ("generate", 2), ("generate", 3), ("continuous", 4), ("continuous+graphs", 4)]
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import doc_tables  # tools/doc_tables.py: results/performance.md's table from such a file
    table = doc_tables.generation_table(out).splitlines()
    assert [line.split(" | ")[:2] for line in table[-4:]] == [
        ["| generate", "2"], ["| generate", "3"], ["| continuous (128-token cache)", "4"],
        ["| continuous + CUDA graphs (128-token cache)", "4"]]
    graphs, cont = report["rows"].pop(), report["rows"].pop()
    # on a CPU transformers runs no CUDA graphs: the same greedy drafts as generate's, and as each other
    assert cont["identical_share"] == graphs["identical_share"] == 1.0 and cont["identity_rows"] == 3
    assert graphs["new_tokens_per_batch"] == cont["new_tokens_per_batch"]
    assert cont["new_tokens_per_batch"] == [4 * 5, 4 * 5]  # EOS off: every draft runs its 5 tokens
    assert cont["cache_tokens"] == 128 and cont["generate_peak_reserved_gib"] is None
    assert cont["new_tokens_per_s"] == round(20 / cont["generate_s_median"], 1)
    for r in report["rows"]:
        assert len(r["generate_s_per_batch"]) == 2 and len(r["score_s_per_batch"]) == 2
        median = sum(r["generate_s_per_batch"]) / 2  # the median of two
        assert r["generate_s_median"] == median
        assert abs(r["new_tokens_per_s"] - r["batch_size"] * 5 / median) <= 0.05
        assert r["drafts_s_estimate"] > 0
        assert r["generate_peak_reserved_gib"] is None and r["score_peak_reserved_gib"] is None


def test_min_new_tokens_reaches_generate(tiny_llama_dir, one_thread):
    model, tok = drafts.load_model(tiny_llama_dir, device="cpu")
    calls = []
    real = model.generate

    def spy(**kw):
        out = real(**kw)
        calls.append((kw["min_new_tokens"], out.shape[1] - kw["input_ids"].shape[1]))
        return out
    model.generate = spy
    texts = drafts.generate(model, tok, ["Is water wet?", "Can a dog fly?"], max_new_tokens=4, min_new_tokens=4)
    assert len(texts) == 2 and calls[0][0] == 4
    assert calls[0][1] == 4  # a random tiny model never writes the stop string
