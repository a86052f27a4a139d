"""Fails loudly if TRL's DPOTrainer internals move under askdraft_dpo/trainer.py, and checks
that in plain mode our trainer IS TRL's DPO: same loss, metrics and update on a tiny Llama."""
import copy
import inspect

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, LlamaForCausalLM, TrainerState
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from axolotl.core.trainers.dpo import DPOStrategy
from axolotl.core.trainers.dpo.args import AxolotlDPOConfig
from askdraft_dpo.args import ScheduleEntry
from askdraft_dpo.trainer import AskDraftDPOTrainer, ScheduleCallback
from conftest import synthetic_pairs


def params(fn):
    return list(inspect.signature(fn).parameters)


def test_trl_internals_the_glue_relies_on():
    # we override _compute_loss, reached from compute_loss, and call compute_ref_log_probs
    assert params(DPOTrainer._compute_loss) == ["self", "model", "inputs", "return_outputs"]
    assert params(DPOTrainer.compute_ref_log_probs) == ["self", "model", "inputs"]
    assert "return self._compute_loss(model, inputs, return_outputs)" in inspect.getsource(DPOTrainer.compute_loss)
    src = inspect.getsource(DPOTrainer._compute_loss)
    # the policy log-probs of trainer.sequence_logps are TRL's, line for line
    for line in ["per_token_logps = selective_log_softmax(shift_logits, shift_labels)",
                 "per_token_logps[shift_completion_mask == 0] = 0.0",
                 "logps = per_token_logps.sum(dim=1)",
                 "chosen_logps, rejected_logps = logps.chunk(2, dim=0)",
                 'inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]',
                 "per_sequence_loss = -F.logsigmoid(self.beta * delta_score)",
                 "chosen_rewards = self.beta * chosen_logratios.detach()",
                 'self._metrics[mode]["rewards/margins"]']:
        assert line in src, f"TRL's DPOTrainer._compute_loss changed: {line!r} is gone"
    ref_src = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    assert 'use_adapter(\n                    unwrapped_model, adapter_name="ref"' in ref_src  # PEFT ref = adapter off
    # askdraft_shared_prompt scores the reference in its own layout: TRL's precompute calls our override
    assert "self.compute_ref_log_probs(model, padded_batch)" in inspect.getsource(DPOTrainer._precompute_ref_logps)
    assert "self._metrics[mode].items()" in inspect.getsource(DPOTrainer.log)
    assert "input_ids = prompt_chosen_ids + prompt_rejected_ids" in inspect.getsource(
        DataCollatorForPreference.torch_call)  # batch is [chosen; rejected]
    # axolotl's rl: dpo trainer is the class we subclass
    assert DPOStrategy.get_trainer_class() in AskDraftDPOTrainer.__mro__


def _trainer(cls, config_cls, model, tok, out, **kw):
    """A trainer the way axolotl builds one for rl: dpo + adapter: base model + peft_config."""
    args = config_cls(output_dir=str(out), per_device_train_batch_size=8, max_steps=1, learning_rate=1e-2,
                      beta=0.1, logging_steps=1, report_to=[], save_strategy="no", seed=0,
                      bf16=False, use_cpu=True, dataloader_num_workers=0, **kw)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    trainer = cls(model=model, args=args, processing_class=tok, peft_config=lora,
                  train_dataset=Dataset.from_list(synthetic_pairs(8)))
    torch.manual_seed(1)
    with torch.no_grad():  # a large random adapter: policy far from the reference, loss far from log 2
        for name, p in trainer.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    return trainer


@pytest.fixture()
def policies(tiny_llama_dir):
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    return base, copy.deepcopy(base), AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_plain_mode_equals_trl_one_real_step(policies, tmp_path):
    ours_model, trl_model, tok = policies
    trl = _trainer(DPOTrainer, DPOConfig, trl_model, tok, tmp_path / "trl")
    ours = _trainer(AskDraftDPOTrainer, AxolotlDPOConfig, ours_model, tok, tmp_path / "ours")
    assert ours.ref_model is None and trl.ref_model is None  # reference = adapter-disabled policy

    batch = next(iter(trl.get_train_dataloader()))
    ours.model.eval(), trl.model.eval()
    with torch.no_grad():
        l_ours, l_trl = ours.compute_loss(ours.model, batch), trl.compute_loss(trl.model, batch)
    assert abs(l_trl.item() - 0.6931) > 1e-3, "degenerate test: policy == reference"
    assert l_ours.item() == pytest.approx(l_trl.item(), rel=1e-6)
    ours.metric_numbers("eval")  # our metrics are tensors until log() (no host sync a micro-step)
    for key in ["rewards/margins", "rewards/accuracies", "rewards/chosen", "logps/rejected"]:
        assert ours._metrics["eval"][key] == pytest.approx(trl._metrics["eval"][key], rel=1e-5), key

    before = {n: p.detach().clone() for n, p in ours.model.named_parameters() if p.requires_grad}
    ours.model.train(), trl.model.train()
    ours.train(), trl.train()
    log_ours, log_trl = ours.state.log_history[0], trl.state.log_history[0]
    assert log_ours["loss"] == pytest.approx(log_trl["loss"], rel=1e-5)
    assert log_ours["rewards/margins"] == pytest.approx(log_trl["rewards/margins"], rel=1e-5)
    assert log_ours["askdraft/beta"] == 0.1 and log_ours["askdraft/pairs_dropped"] == 0
    trained = [(n, p) for n, p in ours.model.named_parameters() if p.requires_grad]
    other = dict(trl.model.named_parameters())
    assert trained and all(torch.allclose(p, other[n], atol=1e-6) for n, p in trained)
    # and the step moved the adapter (lr 1e-2): the comparison above is not vacuous
    assert not all(torch.allclose(p, before[n]) for n, p in trained)


def test_modes_change_the_loss(policies, tmp_path):
    model, _, tok = policies
    ours = _trainer(AskDraftDPOTrainer, AxolotlDPOConfig, model, tok, tmp_path)
    batch = next(iter(ours.get_train_dataloader()))
    losses = {}
    for cal, robust in [("none", "none"), ("seed", "none"), ("published", "none"), ("none", "seed"),
                        ("none", "published")]:
        ours.set_phase(0.1, cal, robust)
        with torch.no_grad():
            losses[cal, robust] = ours.compute_loss(ours.model, batch).item()
    assert len({round(v, 6) for v in losses.values()}) == len(losses), losses
    ours.metric_numbers("train")
    assert ours._metrics["train"]["askdraft/pairs_dropped"][3] == 1  # 15 % of 8 pairs -> 1 (carry .2)
    assert ours._metrics["train"]["askdraft/pairs_dropped_total"] == [1.0]


def test_unsupported_trl_options_are_refused(policies, tmp_path):
    model, _, tok = policies
    with pytest.raises(ValueError, match="ld_alpha"):
        _trainer(AskDraftDPOTrainer, AxolotlDPOConfig, model, tok, tmp_path, ld_alpha=0.5)


def test_schedule_callback_sets_each_epoch(policies, tmp_path):
    model, _, tok = policies
    ours = _trainer(AskDraftDPOTrainer, AxolotlDPOConfig, model, tok, tmp_path)
    cb = ScheduleCallback(ours, [ScheduleEntry(epochs=(1, 1), beta=0.05),
                                 ScheduleEntry(epochs=(2, 3), beta=0.1, cal="seed"),
                                 ScheduleEntry(epochs=(4, 4), beta=0.1, robust="published")])
    seen = []
    for epoch_done in [0.0, 1.0, 2.0, 2.5, 3.0, 4.0]:  # 2.5: resumed in the middle of epoch 3
        cb.on_epoch_begin(ours.args, TrainerState(epoch=epoch_done), None)
        seen.append((ours.schedule_epoch, ours.beta, ours.args.beta, ours.cal, ours.robust))
    assert seen == [(1, 0.05, 0.05, "none", "none"), (2, 0.1, 0.1, "seed", "none"),
                    (3, 0.1, 0.1, "seed", "none"), (3, 0.1, 0.1, "seed", "none"),
                    (4, 0.1, 0.1, "none", "published"), (5, 0.1, 0.1, "none", "published")]


def test_completion_logps_equal_the_full_logits_computation(policies):
    """The LM head over the completion positions only gives TRL's full-logits log-probs."""
    from askdraft_dpo.trainer import completion_logps, sequence_logps
    model = policies[0].eval()
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0                                   # right padding
    completion = torch.zeros_like(ids)
    for row, (start, end) in enumerate([(7, 12), (5, 10), (9, 12), (11, 12)]):
        completion[row, start:end] = 1
    kwargs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        full = sequence_logps(model(**kwargs).logits, ids, completion)
        part, out = completion_logps(model, kwargs, ids, completion)
    assert out.logits.shape[1] == 12 - 5 + 1             # from the position before column 5
    assert torch.allclose(part, full, atol=1e-6) and (full != 0).all()
