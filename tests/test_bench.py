"""The 7B benchmark's accounting and its --tiny CPU run (tools/askdraft/bench.py)."""
import json

import pytest
import torch

from askdraft import bench

ROW_FIELDS = {"phase", "config", "peak_reserved_gib", "peak_allocated_gib", "useful_tokens_per_s",
              "mfu", "device", "date", "commit", "settings"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_token_counts_by_hand():
    lengths = [20, 30, 128]
    assert bench.token_counts(lengths, "pad", 128) == (178, 3 * 128)
    assert bench.token_counts(lengths, "longest") == (178, 3 * 128)
    assert bench.token_counts([20, 30], "longest") == (50, 60)
    assert bench.token_counts(lengths, "pack") == (178, 178)
    assert bench.fit(100, 60, 128) == (100, 28)   # completion cut to fit
    assert bench.fit(200, 5, 128) == (127, 1)     # a completion token always survives


def test_make_batch_crafted():
    rows = [(3, 2), (5, 1)]
    batch, counts = bench.make_batch(rows, "pad", 8, vocab=50, device="cpu")
    assert counts == (11, 16) and batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum() == 11
    assert (batch["labels"] != -100).sum() == 3            # completions only
    assert batch["labels"][0, 3:5].tolist() == batch["input_ids"][0, 3:5].tolist()
    packed, counts = bench.make_batch(rows, "pack", None, vocab=50, device="cpu")
    assert counts == (11, 11) and packed["input_ids"].shape == (1, 11)
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]
    assert "attention_mask" not in packed and (packed["labels"] != -100).sum() == 3


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return bench.add_lora(bench.build_model(bench.TINY, torch.device("cpu"), "none"))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packing_matches_padding(tiny, attn):
    """A packed row gives the loss and per-sequence log-probs of the same rows padded: no
    attention or label leaks across packed sequences."""
    tiny.eval()
    tiny.get_base_model().set_attn_implementation(attn)
    rows = [(4, 3), (6, 2), (2, 5)]
    out = {}
    for layout in ("pad", "pack"):
        torch.manual_seed(0)  # the same token ids for both layouts
        batch, _ = bench.make_batch(rows, layout, 16, bench.TINY["vocab_size"], "cpu")
        with torch.no_grad():
            out[layout] = tiny(**batch).loss, bench.seq_logps(tiny, batch)
    torch.testing.assert_close(out["pack"][0], out["pad"][0])
    torch.testing.assert_close(out["pack"][1], out["pad"][1])
    assert out["pad"][1].shape == (3,)


def test_param_counts_and_peaks():
    n_base = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    assert n_base == pytest.approx(6.607e9, rel=1e-3)
    assert bench.param_counts(bench.LLAMA2_7B, None) == (n_base, 0)
    assert bench.flops_per_useful_token("B", n_base, 0) == 4 * n_base
    assert bench.flops_per_useful_token("C", n_base, 0) == 6 * n_base
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("cpu") is None


def test_nf4_qlora_builds_and_trains():
    """bitsandbytes NF4 layers under peft LoRA: the real QLoRA code path, at the tiny shape."""
    bnb = pytest.importorskip("bitsandbytes")
    model = bench.add_lora(bench.build_model(bench.TINY, torch.device("cpu"), "nf4"))
    layer = model.get_base_model().model.layers[0].mlp.down_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and "Linear4bit" in type(layer).__name__
    batch, _ = bench.make_batch([(4, 3), (3, 3)], "pad", 8, bench.TINY["vocab_size"], "cpu")
    model(**batch).loss.backward()
    assert layer.lora_B["default"].weight.grad is not None


def test_tiny_run_rows(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps([{"phase": "B", "config": "plain", "device": "NVIDIA H100 80GB HBM3",
                                "shape": "llama2-7b", "useful_tokens_per_s": 1.0}]))
    args = ["--tiny", "--synthetic", "--steps", "1", "--warmup", "1", "--out", str(out)]
    bench.main(args + ["--pipeline", "--draft-questions", "20", "--gen-batch", "10", "--gen-batches", "1",
            "--new-tokens", "4", "--eval-docs", "10"])
    rows = json.loads(out.read_text())
    assert rows[0]["device"].startswith("NVIDIA")                  # other devices' rows kept
    mine = {(r.get("phase"), r["config"]): r for r in rows if r["device"] == "cpu"}
    for phase in "ABC":
        for config in ("plain", "tuned"):
            row = mine[(phase, config)]
            assert ROW_FIELDS <= set(row) and "error" not in row
            assert row["useful_tokens_per_s"] > 0 and row["mfu"] is None
            assert 0 < row["useful_tokens"] <= row["total_tokens"]
    for phase in "AB":  # plain pads every row to 128; tuned packs without padding
        plain, tuned = mine[(phase, "plain")], mine[(phase, "tuned")]
        assert plain["total_tokens"] == plain["settings"]["micro"] * plain["settings"]["accum"] * 128
        assert tuned["total_tokens"] == tuned["useful_tokens"] == plain["useful_tokens"]
        assert plain["padding_fraction"] > 0.2 and tuned["padding_fraction"] == 0
    pipe = mine[(None, "tuned")]
    assert pipe["pipeline_7b_wall_s"] == pytest.approx(sum(pipe["per_stage_s"].values()))
    # tuned C reads precomputed reference log-probs; the pipeline pays that one pass once
    assert mine[("C", "tuned")]["settings"]["ref"] == "precomputed"
    assert set(pipe["per_stage_s"]) == {"A", "B", "C", "C_reference_logps", "drafts", "eval", "model_loads"}
    bench.main(args + ["--phases", "A", "--configs", "tuned"])  # merging replaces, not appends
    assert len(json.loads(out.read_text())) == len(rows)


def test_tiny_never_writes_results(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--out", str(tmp_path / "results/bench.json"), "--repo", str(tmp_path)])
