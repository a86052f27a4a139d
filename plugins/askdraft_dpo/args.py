"""Recipe keys of the askdraft_dpo plugin, merged by axolotl into its config schema.

    askdraft_schedule:                 # required: one entry per block of epochs (1-based, inclusive)
      - {epochs: [1, 1], beta: 0.05, cal: none, robust: none}   # recipes/phase_c.yaml: the seed's
      - ...
    askdraft_drop_fraction: 0.15       # seed Dr-DPO: share of pairs dropped per batch
    askdraft_drop_score: margin        # seed Dr-DPO: which pairs count as most disagreeing
    askdraft_dr_beta_prime: 1.0        # published Dr. DPO temperature beta'
    askdraft_free_memory_each_step: true   # axolotl's gc.collect() + empty_cache() after each micro-step
    askdraft_cudnn_attention: true     # false: SDPA without its cuDNN backend while phase C trains
    askdraft_length_normalize: false   # stabiliser: per-token mean log-probs instead of sums
    askdraft_rpo_alpha: 0.0            # stabiliser: + alpha * NLL of the chosen completion (RPO)
    askdraft_shared_prompt: false      # speed: one row a pair, the prompt once (shared_prompt.py)

Three speed switches. free_memory_each_step and cudnn_attention trade memory headroom for speed
(recipes/profiles/dpo-fast.yaml turns both off): Axolotl's DPO trainer frees memory after every
micro-step, which keeps an 8 GB card flat but costs a full gc.collect() (0.38 s with the stack
imported, on the 2-core CPU) a step; cuDNN's SDPA builds a plan for each new sequence shape (about
3 ms of CPU per attention call on the H200). shared_prompt (on in the fast profiles) gives TRL's
log-probs on about half the tokens: one row a pair, the prompt once (shared_prompt.py).

cal / robust: none | seed | published (see losses.py). drop_score: "margin" drops the pairs with
the lowest reward margin beta*h (the policy, relative to the reference, prefers the rejected
answer most); "policy" the lowest log pi(chosen) - log pi(rejected) (reference ignored);
"loss" the highest per-pair loss of the epoch's loss.
"""
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The names and defaults of the loss modes, here only: losses.py and the schema below read them.
OFF = "none"
MODES = (OFF, "seed", "published")           # each schedule entry's `cal` and `robust`
DROP_SCORES = ("margin", "policy", "loss")   # askdraft_drop_score
DROP_FRACTION, DROP_SCORE, DR_BETA_PRIME = 0.15, "margin", 1.0
Mode = Literal[MODES]


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: tuple[int, int] = Field(description="[first, last]: the 1-based epochs this entry covers, inclusive")
    beta: float = Field(gt=0, description="DPO beta for these epochs")
    cal: Mode = Field(default=OFF, description="calibration: none; seed (the detached batch mean of the "
                      "log-gap subtracted before the sigmoid); published (Cal-DPO, Xiao et al. 2024)")
    robust: Mode = Field(default=OFF, description="robustness: none; seed (drop the askdraft_drop_fraction "
                         "most disagreeing pairs); published (Dr. DPO, Wu et al. 2024)")

    @field_validator("epochs")
    @classmethod
    def check_epochs(cls, v):
        if v[0] < 1 or v[1] < v[0]:
            raise ValueError(f"epochs must be [first, last] with 1 <= first <= last, got {list(v)}")
        return v


def entry_for_epoch(schedule, epoch):
    """The schedule entry of a 1-based epoch; the last entry goes on past the schedule's end."""
    for entry in schedule:
        if entry.epochs[0] <= epoch <= entry.epochs[1]:
            return entry
    return schedule[-1]


def askdraft_key_like(key):
    """This plugin's key that `key` (not a known key) looks like a typo of: the key without its
    askdraft_ prefix, or a close spelling with or without the prefix; None otherwise."""
    import difflib

    ours = list(AskDraftDPOArgs.model_fields)
    bare = {k.removeprefix("askdraft_"): k for k in ours}
    if key in bare:
        return bare[key]
    near = difflib.get_close_matches(key, ours, n=1, cutoff=0.85) or \
        [bare[m] for m in difflib.get_close_matches(key, list(bare), n=1, cutoff=0.85)]
    return near[0] if near else None


class AskDraftDPOArgs(BaseModel):
    """Mixed into axolotl's AxolotlInputConfig; the validators also see the other recipe keys."""

    askdraft_schedule: list[ScheduleEntry] | None = Field(
        default=None, description="required: one entry per block of epochs, covering epochs 1, 2, ... without "
        "gaps; the last entry goes on past its epochs. recipes/phase_c.yaml holds the seed's schedule")
    askdraft_drop_fraction: float = Field(
        default=DROP_FRACTION, ge=0.0, lt=1.0, description="seed Dr-DPO: the share of each batch's pairs dropped from the loss")
    askdraft_drop_score: Literal[DROP_SCORES] = Field(
        default=DROP_SCORE, description="seed Dr-DPO: which pairs are dropped: margin, the lowest reward margin "
        "beta*h (the policy, relative to the reference, prefers the rejected answer most); policy, the lowest "
        "log pi(chosen) - log pi(rejected); loss, the highest per-pair loss")
    askdraft_dr_beta_prime: float = Field(
        default=DR_BETA_PRIME, gt=0.0, description="published Dr. DPO: the temperature beta' of "
        "-beta' log mean exp(-loss_i / beta')")
    askdraft_free_memory_each_step: bool = Field(
        default=True, description="keep Axolotl's gc.collect() + torch.cuda.empty_cache() after every "
        "micro-step (flat memory on a small card); false is faster (dpo-fast profile)")
    askdraft_cudnn_attention: bool = Field(
        default=True, description="let SDPA use its cuDNN backend; false trains without it (cuDNN plans each "
        "new sequence shape, ~3 ms of CPU an attention call) and restores it after training (dpo-fast profile)")
    askdraft_length_normalize: bool = Field(
        default=False, description="stabiliser: compare per-token mean log-probs instead of sums (a 2-token "
        "answer against a 60-token draft is otherwise separable by length alone)")
    askdraft_rpo_alpha: float = Field(
        default=0.0, ge=0.0, description="stabiliser: add alpha times the chosen completion's per-token NLL "
        "(RPO, arXiv 2404.19733; TRL's rpo_alpha), so the right answer's likelihood cannot fall while margins grow")
    askdraft_shared_prompt: bool = Field(
        default=False, description="run each pair as one row, the prompt once and both completions after it, "
        "each seeing only the prompt and itself: TRL's log-probs on about half the tokens (attn_implementation "
        "sdpa or eager)")

    @model_validator(mode="before")
    @classmethod
    def askdraft_check_keys(cls, data):
        # cls is axolotl's merged config class (hundreds of fields): name only this plugin's keys
        ours = sorted(AskDraftDPOArgs.model_fields)
        if isinstance(data, dict):
            unknown = [k for k in data if str(k).startswith("askdraft_") and k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown askdraft_dpo key(s) {unknown}; known: {ours}")
            typos = {k: m for k in data if k not in cls.model_fields and (m := askdraft_key_like(str(k)))}
            if typos:
                raise ValueError("unknown key(s) that look like askdraft_dpo keys (they would be ignored): "
                                 + ", ".join(f"{k!r} (did you mean {m!r}?)" for k, m in typos.items())
                                 + f"; known: {ours}")
        return data

    @field_validator("askdraft_schedule")
    @classmethod
    def askdraft_check_schedule(cls, schedule):
        if schedule is None:
            return None
        if not schedule:
            raise ValueError("askdraft_schedule is empty")
        expected = 1
        for entry in sorted(schedule, key=lambda e: e.epochs[0]):
            first, last = entry.epochs
            if first != expected:
                kind = "overlap" if first < expected else "gap"
                raise ValueError(f"askdraft_schedule: {kind} at epoch {min(first, expected)}: "
                                 f"entries must cover epochs 1, 2, ... without gaps or overlaps")
            expected = last + 1
        return sorted(schedule, key=lambda e: e.epochs[0])

    @model_validator(mode="after")
    def askdraft_check_recipe(self):
        rl = getattr(self, "rl", None)
        if rl is not None and getattr(rl, "value", rl) != "dpo":
            raise ValueError(f"the askdraft_dpo plugin needs rl: dpo, got rl: {getattr(rl, 'value', rl)}")
        schedule = self.askdraft_schedule  # required where the plugin is listed (plugin.register)
        num_epochs = getattr(self, "num_epochs", None)
        if schedule and num_epochs and schedule[-1].epochs[1] < math.ceil(num_epochs):
            raise ValueError(f"askdraft_schedule ends at epoch {schedule[-1].epochs[1]} "
                             f"but num_epochs is {num_epochs}")
        rl_beta = getattr(self, "rl_beta", None)
        if schedule and rl_beta is not None and rl_beta != schedule[0].beta:
            raise ValueError(f"rl_beta {rl_beta} disagrees with askdraft_schedule (epoch 1 beta "
                             f"{schedule[0].beta}); the schedule sets beta, drop rl_beta")
        loss_type = getattr(self, "dpo_loss_type", None)
        if loss_type not in (None, ["sigmoid"]):
            raise ValueError(f"askdraft_dpo computes its own loss; dpo_loss_type must be unset, got {loss_type}")
        return self


_registered = None  # the plugin keys of the config the plugin registered last, for the next trainer


def recipe_args_of(cfg):
    """The plugin keys of an axolotl config (every default where a key is unset)."""
    return AskDraftDPOArgs(**{k: cfg[k] for k in AskDraftDPOArgs.model_fields if cfg.get(k) is not None})


def use_recipe(cfg):
    """Keep the config's plugin keys for the trainer about to be built: TRL scores the reference
    log-probs inside the trainer's __init__, before axolotl hands the trainer to the plugin."""
    global _registered
    _registered = recipe_args_of(cfg)


def take_recipe():
    """The registered config's plugin keys, once (a trainer built without a config gets defaults)."""
    global _registered
    args, _registered = _registered, None
    return args if args is not None else AskDraftDPOArgs()
