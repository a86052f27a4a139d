"""The askdraft_dpo plugin class: registers the trainer and checks the recipe's pairs files."""
from axolotl.integrations.base import BasePlugin

from . import PLUGIN
from .args import recipe_args_of, use_recipe
from .rows import PAIR_FIELDS, read_pairs

TRAINER_CLS = "askdraft_dpo.trainer.AskDraftDPOTrainer"


def check_pair_files(cfg):
    """Validate every local JSONL dataset of the recipe with rows.read_pairs (the text rules
    `askdraft pairs` writes by) before axolotl tokenises it: a row without `chosen` would train
    on the string "None", chosen == rejected trains on nothing, an empty prompt fails deep inside
    axolotl without naming the file. The error names file and line."""
    from pathlib import Path

    for ds in cfg.get("datasets") or []:
        path = ds.get("path") if isinstance(ds, dict) else None
        if not path or not str(path).endswith(".jsonl") or not Path(path).is_file():
            continue  # a Hub dataset or a folder: axolotl's own loading applies
        typ = ds.get("type")
        fields = tuple(typ.get(f"field_{f}") or f for f in PAIR_FIELDS) if isinstance(typ, dict) else PAIR_FIELDS
        read_pairs(path, fields=fields)


class AskDraftDPOPlugin(BasePlugin):
    def get_input_args(self):
        return "askdraft_dpo.args.AskDraftDPOArgs"

    def register(self, cfg):
        # axolotl calls register() of every plugin loaded in this process, also for a later
        # config that does not list this one (e.g. phase B after phase C in one session)
        if PLUGIN not in (cfg.get("plugins") or []):
            return
        # axolotl 0.19's RL builder constructs a trainer class returned by get_trainer_cls()
        # without the model (it passes no positional args), so we route through axolotl's own
        # `trainer_cls` key instead, which gets (model, ref_model) like the stock DPO trainer.
        if cfg.get("rl") != "dpo":
            raise ValueError(f"askdraft_dpo.AskDraftDPOPlugin needs rl: dpo, got rl: {cfg.get('rl')}")
        if cfg.get("trainer_cls") not in (None, TRAINER_CLS):
            raise ValueError(f"askdraft_dpo sets trainer_cls itself; remove trainer_cls: {cfg['trainer_cls']}")
        if not cfg.get("askdraft_schedule"):
            raise ValueError("askdraft_dpo needs askdraft_schedule: one {epochs: [first, last], beta, cal, robust} "
                             "entry per block of epochs (recipes/phase_c.yaml holds the seed's schedule)")
        cfg["trainer_cls"] = TRAINER_CLS
        use_recipe(cfg)
        check_pair_files(cfg)

    def get_trainer_cls(self, cfg):
        return None  # see register()

    def pre_model_load(self, cfg):
        import torch

        if PLUGIN in (cfg.get("plugins") or []) and cfg.get("askdraft_cudnn_attention") is False:
            # keep the setting from before the first load: a merge-lora of this config (SG loop) loads
            # a model too but never reaches post_train
            if getattr(self, "_cudnn_sdp", None) is None:
                self._cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)

    def post_train(self, cfg, model):
        import torch

        if getattr(self, "_cudnn_sdp", None) is not None:  # the process goes on (tools/run_stages.py)
            torch.backends.cuda.enable_cudnn_sdp(self._cudnn_sdp)
            self._cudnn_sdp = None

    def add_callbacks_post_trainer(self, cfg, trainer):
        from .trainer import AskDraftDPOTrainer, ScheduleCallback

        if PLUGIN not in (cfg.get("plugins") or []):  # an SFT config after phase C in this process
            return []
        if not isinstance(trainer, AskDraftDPOTrainer):
            raise TypeError(f"askdraft_dpo expected an AskDraftDPOTrainer, axolotl built {type(trainer).__name__}")
        args = recipe_args_of(cfg)
        trainer.configure(args)
        return [ScheduleCallback(trainer, args.askdraft_schedule)]
