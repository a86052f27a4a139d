"""askdraft_seed: axolotl plugin that seeds Python, NumPy and torch with the recipe's `seed` before
the LoRA adapter is made.

axolotl 0.19 leaves seeding to the HF Trainer, which is built after the adapter: the adapter's
random initial weights (LoRA A) then come from torch's unseeded generator, so two runs of one recipe
started from different LoRA weights (and a second training in one process from the first's RNG
state). With this plugin, `seed: 42` makes a run's adapter, and a float32 CPU run's whole training,
the same every time (tests/test_seed_plugin.py). A recipe without `seed` is left as it is.

In a recipe:
    plugins:
      - askdraft_seed.SeedPlugin
    seed: 42
"""
from axolotl.integrations.base import BasePlugin


class SeedPlugin(BasePlugin):
    def pre_lora_load(self, cfg, model):
        if cfg.get("seed") is not None and "askdraft_seed.SeedPlugin" in (cfg.get("plugins") or []):
            from transformers import set_seed

            set_seed(int(cfg["seed"]))
