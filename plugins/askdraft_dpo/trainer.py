"""Thin glue between TRL 1.9's DPOTrainer (through axolotl's AxolotlDPOTrainer) and losses.py.

TRL writes the DPO loss inline in DPOTrainer._compute_loss, so we override that method: the
policy log-probs are computed as TRL does, over the completion positions only
(tests/test_dpo_trl_glue.py checks TRL's source has not moved and that the values are TRL's), the reference log-probs come from TRL's own compute_ref_log_probs
(for a PEFT model without ref_model: the policy with its adapter disabled, no second copy),
and the loss from losses.askdraft_loss. Metrics go into TRL's self._metrics, which
DPOTrainer.log averages into the normal HF logs (and trainer_state.json's log_history).

Several devices (DDP / DeepSpeed through accelerate): each process runs its own micro-batches,
the global micro-batches r, r + N, ... of the one-GPU order (see losses.py). The Cal mean is over
one micro-batch on every process, as on one GPU; the seed Dr drop count comes from the
micro-batch's global position (pairs_before below), not a per-device carry. Metrics are kept as
detached per-micro-batch tensors of this process (no host sync per micro-step) and turned into
numbers once per log call: one gather over the processes, then each metric is the mean over every
micro-batch of the logging window on every process, which is the one-GPU average over the same
micro-batches. `askdraft/pairs_dropped` is that mean (pairs dropped per micro-batch, as on one
GPU), `askdraft/pairs_dropped_total` the sum over the window and the processes (with
logging_steps 1: the optimizer step's drops).
"""
import contextlib
import math

import torch

from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import selective_log_softmax, use_adapter

from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer

from .args import OFF, entry_for_epoch, take_recipe
from .losses import askdraft_loss, length_normalized, rpo_nll
from .shared_prompt import shared_prompt_logps

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
        self.configure(take_recipe())  # before TRL's __init__, which may score the reference already
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
        self.cal, self.robust = OFF, OFF
        self.schedule_epoch = 0
        # pairs of the global micro-batch order before this process's next training micro-batch
        # (every process advances it by world * n a micro-step), and this process's attention-mask
        # tokens not yet added to TRL's _total_train_tokens (a device tensor: no sync a micro-step)
        self._global_pairs_before, self._pending_tokens = 0, None

    def configure(self, args):
        """The recipe's plugin keys (an AskDraftDPOArgs): args.py holds every default."""
        self.drop_fraction, self.drop_score = args.askdraft_drop_fraction, args.askdraft_drop_score
        self.beta_prime = args.askdraft_dr_beta_prime
        self.free_memory_each_step = args.askdraft_free_memory_each_step
        self.length_normalize, self.rpo_alpha = args.askdraft_length_normalize, args.askdraft_rpo_alpha
        self.shared_prompt = args.askdraft_shared_prompt

    def sequence_logps(self, model, inputs):
        """([chosen; rejected] summed completion log-probs, the model's outputs, the token positions
        the model ran): TRL's two rows a pair, or one row a pair with the prompt once
        (askdraft_shared_prompt)."""
        if self.shared_prompt:
            impl = self.accelerator.unwrap_model(model).config._attn_implementation
            return shared_prompt_logps(model, inputs, getattr(self.data_collator, "pad_token_id", 0), impl)
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        return (*completion_logps(model, model_kwargs, inputs["input_ids"], inputs["completion_mask"]),
                inputs["input_ids"].numel())

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference log-probs (the adapter disabled where there is no ref_model), in the
        layout the policy's are computed in, so the two agree at the start."""
        if not self.shared_prompt:
            return super().compute_ref_log_probs(model, inputs)
        reference = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            reference = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            with reference:
                logps, _, _ = self.sequence_logps(model, inputs)
        return logps.chunk(2, dim=0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.free_memory_each_step:  # AxolotlDPOTrainer's: the step, then gc.collect() + empty_cache()
            return super().training_step(model, inputs, num_items_in_batch)
        return super(AxolotlDPOTrainer, self).training_step(model, inputs, num_items_in_batch)

    def set_phase(self, beta, cal, robust, epoch=0):
        self.beta = self.args.beta = beta
        self.cal, self.robust, self.schedule_epoch = cal, robust, epoch

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps, outputs, positions = self.sequence_logps(model, inputs)
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

        n, world, rank = chosen_logps.shape[0], self.accelerator.num_processes, self.accelerator.process_index
        loss, stats, _ = askdraft_loss(
            chosen_logps, rejected_logps, ref_chosen, ref_rejected,
            beta=self.beta, cal=self.cal, robust=self.robust, drop_fraction=self.drop_fraction,
            drop_score=self.drop_score, beta_prime=self.beta_prime,
            pairs_before=self._global_pairs_before + rank * n,
        )
        if nll is not None:
            loss = loss + self.rpo_alpha * nll
            stats["nll"] = nll.detach()
        if mode == "train":
            # every process's micro-batch holds n pairs (accelerate's even_batches)
            self._global_pairs_before += world * n
            tokens = inputs["attention_mask"].sum().detach()
            self._pending_tokens = tokens if self._pending_tokens is None else self._pending_tokens + tokens
        self._log_metrics(mode, stats, chosen_logps, rejected_logps, ref_chosen, ref_rejected)
        self._metrics[mode]["askdraft/model_positions"].append(torch.tensor(float(positions)))
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, stats, chosen_logps, rejected_logps, ref_chosen, ref_rejected):
        """Per-micro-batch means of this process, as detached 0-dim float32 tensors (numbers at log())."""
        m, mean = self._metrics[mode], lambda t: t.detach().float().mean()
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
        dropped = torch.tensor(float(stats["pairs_dropped"]))  # a host int: no sync
        m["askdraft/pairs_dropped"].append(dropped)
        m["askdraft/pairs_dropped_total"].append(dropped)
        if "nll" in stats:
            m["askdraft/nll_chosen"].append(mean(stats["nll"].reshape(1)))

    def metric_numbers(self, mode):
        """Turn this mode's tensor metrics into TRL's lists of floats, once per log call: one
        gather over the processes of a [metrics x micro-batches] tensor, the mean over processes
        of each micro-batch's value (pairs_dropped_total: the sum over processes and micro-batches,
        as one number). Called by every process at the same point (Trainer.log runs on each), so
        the collective lines up. Float metrics (epoch, beta) are left as they are."""
        m = self._metrics[mode]
        if mode == "train" and self._pending_tokens is not None:
            self._total_train_tokens += int(self.accelerator.gather(self._pending_tokens.reshape(1)).sum().item())
            self._pending_tokens = None
        if not m:  # no micro-batch since the last log (e.g. the train-end summary): nothing to add
            return
        m["num_tokens"] = [self._total_train_tokens]
        keys = sorted(k for k, v in m.items() if v and isinstance(v[0], torch.Tensor))
        if not keys:
            return
        steps = len(m[keys[0]])
        if any(len(m[k]) != steps for k in keys):
            raise RuntimeError(f"askdraft_dpo: metrics with different counts {[(k, len(m[k])) for k in keys]}")
        local = torch.stack([torch.stack([t.to(self.accelerator.device) for t in m[k]]) for k in keys])
        every = self.accelerator.gather(local.unsqueeze(0))  # [processes, metrics, micro-batches]
        per_batch = every.mean(dim=0).tolist()
        for key, row in zip(keys, per_batch):
            m[key] = row
        if "askdraft/pairs_dropped_total" in m:
            m["askdraft/pairs_dropped_total"] = [float(every[:, keys.index("askdraft/pairs_dropped_total")].sum())]

    def log(self, logs, start_time=None):
        self.metric_numbers("train" if self.model.training else "eval")
        super().log(logs, start_time)


class ScheduleCallback(TrainerCallback):
    """At each epoch start, set beta / cal / robust of the trainer from the recipe's schedule."""

    def __init__(self, trainer, schedule):
        if not schedule:
            raise ValueError("askdraft_dpo needs askdraft_schedule (recipes/phase_c.yaml holds the seed's)")
        self.trainer, self.schedule = trainer, schedule

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fraction of epochs done: whole at a boundary, e.g. 1.0 before epoch 2
        # (or k.x when resuming mid-epoch k+1)
        epoch = math.floor(state.epoch + 1e-6) + 1
        entry = entry_for_epoch(self.schedule, epoch)
        self.trainer.set_phase(entry.beta, entry.cal, entry.robust, epoch)
