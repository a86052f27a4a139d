"""askdraft_fastprep: axolotl plugin that writes the prepared dataset without a process pool.

datasets 4.8.4's Dataset.save_to_disk starts a *spawn* process pool plus a manager process
whenever num_proc >= 1, and axolotl 0.19 always passes num_proc >= 1 (at most
dataset_num_proc). Each spawned process re-imports the training stack: on the H100 host that
took 19-21 s per stage to write 2000 rows (`askdraft bench profile`), against milliseconds in
process. With this plugin num_proc=1 means what it says: the write happens in this process.
Larger num_proc values are passed through unchanged.

In a recipe:
    plugins:
      - askdraft_fastprep.FastPrepPlugin
    dataset_num_proc: 1
"""
import functools

import datasets
from axolotl.integrations.base import BasePlugin


def in_process_when_one(save_to_disk):
    """save_to_disk with num_proc=1 turned into num_proc=None (datasets' in-process path)."""
    if getattr(save_to_disk, "askdraft_in_process", False):
        return save_to_disk

    @functools.wraps(save_to_disk)
    def wrapper(self, dataset_path, *args, num_proc=None, **kwargs):
        return save_to_disk(self, dataset_path, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

    wrapper.askdraft_in_process = True
    return wrapper


class FastPrepPlugin(BasePlugin):
    def register(self, cfg):
        datasets.Dataset.save_to_disk = in_process_when_one(datasets.Dataset.save_to_disk)
