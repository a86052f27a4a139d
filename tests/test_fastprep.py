"""askdraft_fastprep: num_proc=1 writes the prepared dataset in process, with the same bytes."""
import datasets
import pytest

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
