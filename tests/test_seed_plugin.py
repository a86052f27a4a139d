"""askdraft_seed: the recipe's seed reaches torch before the LoRA adapter is drawn, in every phase
and every profile make composes (axolotl 0.19 seeds only in the Trainer, built after the adapter).
tests/test_phase_c_axolotl.py's shared-prompt test runs `axolotl train` in two processes and needs
their adapters, and so their gradient norms, to be the same."""
import pytest
import torch

from askdraft import REPO_ROOT as REPO
from askdraft.recipe import compose
from askdraft_seed import SeedPlugin

PLUGIN = "askdraft_seed.SeedPlugin"
# PROFILE -> (profiles of every phase, profiles phase C adds), as the Makefile composes them
PROFILES = {"cpu": (["cpu"], ["dpo-fast"]), "smoke": (["cpu", "smoke"], ["dpo-fast"]), "gpu": (["gpu"], []),
            "gpu-fast": (["gpu-fast"], ["dpo-fast"]), "gpu-7b-fast": (["gpu-7b-fast"], ["dpo-7b-fast"])}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("phase", ["a", "b", "c"])
def test_every_composed_recipe_seeds_its_adapter(phase, profile):
    every, only_c = PROFILES[profile]
    cfg = compose(REPO / f"recipes/phase_{phase}.yaml", every + (only_c if phase == "c" else []))
    assert PLUGIN in cfg["plugins"] and cfg["seed"] == 42


def draws(seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return torch.rand(4)


def test_the_hook_seeds_only_a_recipe_that_lists_it():
    SeedPlugin().pre_lora_load({"seed": 7, "plugins": [PLUGIN]}, None)
    assert torch.equal(draws(), draws(7))
    torch.manual_seed(1)
    state = torch.get_rng_state()
    SeedPlugin().pre_lora_load({"seed": 7, "plugins": ["askdraft_fastprep.FastPrepPlugin"]}, None)  # not listed
    SeedPlugin().pre_lora_load({"plugins": [PLUGIN]}, None)  # no seed
    assert torch.equal(torch.get_rng_state(), state)
