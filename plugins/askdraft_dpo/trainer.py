"""Thin glue between TRL 1.9's DPOTrainer (through axolotl's AxolotlDPOTrainer) and losses.py.

TRL writes the DPO loss inline in DPOTrainer._compute_loss, so we override that method: the
policy log-probs are computed as TRL does, over the completion positions only
(tests/test_dpo_trl_glue.py checks TRL's source has not moved and that the values are TRL's), the reference log-probs come from TRL's own compute_ref_log_probs
(for a PEFT model without ref_model: the policy with its adapter disabled, no second copy),
and the loss from losses.askdraft_loss. Metrics go into TRL's self._metrics, which
DPOTrainer.log averages into the normal HF logs (and trainer_state.json's log_history).
"""
import math

from transformers import TrainerCallback
from trl.trainer.utils import selective_log_softmax

from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

from .args import SEED_SCHEDULE, AskDraftDPOArgs, entry_for_epoch
from .losses import askdraft_loss, length_normalized, rpo_nll

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def sequence_logps(logits, input_ids, completion_mask):
    """Summed log-prob of the completion tokens of each row (TRL's computation, ld_alpha=None)."""
    per_token = selective_log_softmax(logits[..., :-1, :], input_ids[..., 1:])
    per_token[completion_mask[..., 1:] == 0] = 0.0
    return per_token.sum(dim=1)


def completion_logps(model, model_kwargs, input_ids, completion_mask):
    """sequence_logps without the logits of the prompt positions: the model's LM head runs only
    from the position before the batch's first completion token (`logits_to_keep`), so a batch
    x length x vocab logits tensor is never made for the prompts (a 130-token prompt before a
    2-token answer is most of a pair). Returns (logps, outputs)."""
    length = input_ids.shape[1]
    first = int(completion_mask.any(dim=0).int().argmax())  # first column holding a completion token
    keep = length - first + 1
    outputs = model(**model_kwargs, use_cache=False, logits_to_keep=keep)
    return sequence_logps(outputs.logits, input_ids[:, -keep:], completion_mask[:, -keep:]), outputs


class AskDraftDPOTrainer(AxolotlDPOTrainer):
    """DPO with the askdraft schedule. With the defaults (cal/robust "none") it is plain DPO."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = {
            "loss_type": self.loss_types != ["sigmoid"],
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "use_weighting": self.use_weighting,
            "use_liger_kernel": self.use_liger_kernel,
            "padding_free": getattr(self.args, "padding_free", False),
            "MoE router aux loss": self.aux_loss_enabled,
        }
        if bad := [k for k, v in unsupported.items() if v]:
            raise ValueError(f"askdraft_dpo computes its own loss and does not support DPO options {bad}")
        self.cal, self.robust = "none", "none"
        self._drop_carry, self.schedule_epoch = 0.0, 0
        self.configure(AskDraftDPOArgs())  # the recipe keys' defaults; the plugin passes the recipe's

    def configure(self, args):
        """The recipe's plugin keys (an AskDraftDPOArgs): args.py holds every default."""
        self.drop_fraction, self.drop_score = args.askdraft_drop_fraction, args.askdraft_drop_score
        self.beta_prime = args.askdraft_dr_beta_prime
        self.free_memory_each_step = args.askdraft_free_memory_each_step
        self.length_normalize, self.rpo_alpha = args.askdraft_length_normalize, args.askdraft_rpo_alpha

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.free_memory_each_step:  # AxolotlDPOTrainer's: the step, then gc.collect() + empty_cache()
            return super().training_step(model, inputs, num_items_in_batch)
        return super(AxolotlDPOTrainer, self).training_step(model, inputs, num_items_in_batch)

    def set_phase(self, beta, cal, robust, epoch=0):
        self.beta = self.args.beta = beta
        self.cal, self.robust, self.schedule_epoch = cal, robust, epoch

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        logps, outputs = completion_logps(model, model_kwargs, inputs["input_ids"], inputs["completion_mask"])
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]

        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_model = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
        len_chosen, len_rejected = inputs["completion_mask"][..., 1:].sum(dim=1).chunk(2, dim=0)
        nll = rpo_nll(chosen_logps, len_chosen) if self.rpo_alpha else None
        if self.length_normalize:
            chosen_logps, ref_chosen = (length_normalized(t, len_chosen) for t in (chosen_logps, ref_chosen))
            rejected_logps, ref_rejected = (length_normalized(t, len_rejected) for t in (rejected_logps, ref_rejected))

        loss, stats, carry = askdraft_loss(
            chosen_logps, rejected_logps, ref_chosen, ref_rejected,
            beta=self.beta, cal=self.cal, robust=self.robust, drop_fraction=self.drop_fraction,
            drop_score=self.drop_score, beta_prime=self.beta_prime, carry=self._drop_carry,
        )
        if nll is not None:
            loss = loss + self.rpo_alpha * nll
            stats["nll"] = nll.detach()
        if mode == "train":
            self._drop_carry = carry
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._log_metrics(mode, stats, chosen_logps, rejected_logps, ref_chosen, ref_rejected)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, stats, chosen_logps, rejected_logps, ref_chosen, ref_rejected):
        m, mean = self._metrics[mode], lambda t: self.accelerator.gather(t.detach()).float().mean().item()
        m["num_tokens"] = [self._total_train_tokens]
        m["rewards/chosen"].append(mean(stats["chosen_rewards"]))
        m["rewards/rejected"].append(mean(stats["rejected_rewards"]))
        m["rewards/accuracies"].append(mean(stats["accuracies"]))
        m["rewards/margins"].append(mean(stats["margins"]))
        m["logps/chosen"].append(mean(chosen_logps))
        m["logps/rejected"].append(mean(rejected_logps))
        m["askdraft/ref_logps_chosen"].append(mean(ref_chosen))
        m["askdraft/ref_logps_rejected"].append(mean(ref_rejected))
        m["askdraft/epoch"].append(float(self.schedule_epoch))
        m["askdraft/beta"].append(float(self.beta))
        m["askdraft/cal_shift"].append(mean(stats["cal_shift"].reshape(1)))
        m["askdraft/pairs_dropped"].append(float(stats["pairs_dropped"]))  # per micro-batch, this device
        if "nll" in stats:
            m["askdraft/nll_chosen"].append(mean(stats["nll"].reshape(1)))


class ScheduleCallback(TrainerCallback):
    """At each epoch start, set beta / cal / robust of the trainer from the recipe's schedule."""

    def __init__(self, trainer, schedule=None):
        self.trainer, self.schedule = trainer, schedule or SEED_SCHEDULE

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fraction of epochs done: whole at a boundary, e.g. 1.0 before epoch 2
        # (or k.x when resuming mid-epoch k+1)
        epoch = math.floor(state.epoch + 1e-6) + 1
        entry = entry_for_epoch(self.schedule, epoch)
        self.trainer.set_phase(entry.beta, entry.cal, entry.robust, epoch)
