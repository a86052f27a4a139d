"""askdraft_fastprep: axolotl plugin that removes two fixed costs of axolotl 0.19's stages.

1. The prepared dataset is written without a process pool. datasets 4.8.4's
   Dataset.save_to_disk starts a *spawn* process pool plus a manager process whenever
   num_proc >= 1, and axolotl 0.19 always passes num_proc >= 1 (at most dataset_num_proc). Each
   spawned process re-imports the training stack: on the H100 host that took 19-21 s per stage
   to write 2000 rows (`askdraft bench profile`), against milliseconds in process. With this
   plugin num_proc=1 means what it says. Larger num_proc values are passed through unchanged.
2. `axolotl merge-lora` builds a throwaway nn.Linear and PEFT LoRA layer for every merged
   weight, and torch initialises each on the CPU before axolotl overwrites it with the base
   weight and the adapter's A and B. At the Llama-2-7B shape that random init was about half of
   the merge (cProfile: 39.5 of ~80 s). The plugin skips it with transformers' no_init_weights;
   the merged weights are the same bytes.

In a recipe:
    plugins:
      - askdraft_fastprep.FastPrepPlugin
    dataset_num_proc: 1
"""
import functools

import datasets
from axolotl.cli.utils import lora_merge
from axolotl.integrations.base import BasePlugin
from transformers.initialization import no_init_weights


def in_process_when_one(save_to_disk):
    """save_to_disk with num_proc=1 turned into num_proc=None (datasets' in-process path)."""
    if getattr(save_to_disk, "askdraft_in_process", False):
        return save_to_disk

    @functools.wraps(save_to_disk)
    def wrapper(self, dataset_path, *args, num_proc=None, **kwargs):
        return save_to_disk(self, dataset_path, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

    wrapper.askdraft_in_process = True
    return wrapper


def without_init(build_layer):
    """axolotl's per-weight PEFT layer build with torch's init functions skipped: every tensor
    they would fill is overwritten before the delta is computed."""
    if getattr(build_layer, "askdraft_without_init", False):
        return build_layer

    @functools.wraps(build_layer)
    def wrapper(*args, **kwargs):
        with no_init_weights():
            return build_layer(*args, **kwargs)

    wrapper.askdraft_without_init = True
    return wrapper


class FastPrepPlugin(BasePlugin):
    def register(self, cfg):
        datasets.Dataset.save_to_disk = in_process_when_one(datasets.Dataset.save_to_disk)
        lora_merge._build_peft_layer_and_get_delta = without_init(lora_merge._build_peft_layer_and_get_delta)
