"""askdraft_fastprep: num_proc=1 writes the prepared dataset in process, with the same bytes;
merge-lora skips the throwaway layers' random init and writes the same merged bytes."""
import datasets
import pytest
import torch
from axolotl.cli.utils import lora_merge
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from askdraft_fastprep import FastPrepPlugin


@pytest.fixture
def no_process_pools(monkeypatch):
    """Make any process pool datasets tries to start fail loudly."""
    def refuse(*a, **k):
        raise RuntimeError("a process pool was started")
    monkeypatch.setattr(datasets.arrow_dataset.mp, "get_context", refuse)
    # datasets' own save_to_disk for the test (an axolotl run earlier in this process registered the
    # plugin, which wraps it for the whole process), put back as it was afterwards
    stock = datasets.Dataset.save_to_disk
    if getattr(stock, "askdraft_in_process", False):
        stock = stock.__wrapped__
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", stock)


def test_stock_datasets_starts_a_pool_for_num_proc_1(tmp_path, no_process_pools):
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * 10})
    with pytest.raises(RuntimeError, match="process pool"):
        ds.save_to_disk(str(tmp_path / "stock"), num_proc=1)  # why the plugin exists


def test_plugin_writes_in_process_and_round_trips(tmp_path, no_process_pools):
    FastPrepPlugin().register({})
    FastPrepPlugin().register({})  # idempotent: no double wrapping
    assert datasets.Dataset.save_to_disk.__wrapped__.__name__ == "save_to_disk"
    assert not hasattr(datasets.Dataset.save_to_disk.__wrapped__, "askdraft_in_process")
    ds = datasets.Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(300)]}).shuffle(seed=0)
    ds.save_to_disk(str(tmp_path / "ours"), num_proc=1)
    assert datasets.load_from_disk(str(tmp_path / "ours"))["input_ids"] == ds["input_ids"]
    with pytest.raises(RuntimeError, match="process pool"):  # num_proc > 1 still uses datasets' pool
        ds.save_to_disk(str(tmp_path / "two"), num_proc=2)


@pytest.fixture
def stock_merge(monkeypatch):
    """axolotl's own per-weight layer build for the test, and a count of torch's kaiming init calls
    on real tensors (axolotl's layer-type map builds the model on the meta device: free)."""
    stock = lora_merge._build_peft_layer_and_get_delta
    monkeypatch.setattr(lora_merge, "_build_peft_layer_and_get_delta", getattr(stock, "__wrapped__", stock))
    calls = []
    kaiming = torch.nn.init.kaiming_uniform_

    def counted(*args, **kwargs):
        if (args[0] if args else kwargs["tensor"]).device.type != "meta":
            calls.append(1)
        return kaiming(*args, **kwargs)
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", counted)
    return calls


def test_merge_lora_skips_init_and_writes_the_same_weights(tiny_llama_dir, tmp_path, stock_merge):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight)  # a trained adapter: B is no longer zero
    model.save_pretrained(tmp_path / "adapter")

    def merge(out):
        stock_merge.clear()
        lora_merge.merge_lora_sharded_efficient(tiny_llama_dir, tmp_path / "adapter", tmp_path / out,
                                                device="cpu", simulate_nf4=True)
        return load_file(tmp_path / out / "model.safetensors"), len(stock_merge)

    stock, stock_inits = merge("stock")
    FastPrepPlugin().register({})
    FastPrepPlugin().register({})  # idempotent
    ours, our_inits = merge("ours")
    assert stock_inits > 0 and our_inits == 0  # axolotl's build init every layer; with the plugin, none
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert not torch.equal(stock["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert stock.keys() == ours.keys()
    assert all(torch.equal(stock[k], ours[k]) for k in stock)
