"""askdraft_shared_prompt: one row a pair, the prompt once. Its log-probs, its loss and its update
are TRL's two-rows-a-pair ones (tiny Llama, float32), on fewer positions."""
import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, LlamaForCausalLM
from trl.trainer.dpo_trainer import DataCollatorForPreference

from axolotl.core.trainers.dpo.args import AxolotlDPOConfig
from askdraft_dpo.args import take_recipe, use_recipe
from askdraft_dpo.shared_prompt import layout, shared_prompt_logps
from askdraft_dpo.trainer import AskDraftDPOTrainer, sequence_logps
from conftest import synthetic_pairs


def collated(tok, pairs):
    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]
    examples = [{"prompt_ids": tok(p["prompt"])["input_ids"], "chosen_ids": ids(p["chosen"]) + [tok.eos_token_id],
                 "rejected_ids": ids(p["rejected"]) + [tok.eos_token_id]} for p in pairs]
    return DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)


@pytest.fixture()
def tok(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_log_probs_equal_trls_two_rows(tiny_llama_dir, tok, attn):
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation=attn).eval()
    pairs = synthetic_pairs(8)
    pairs[3]["prompt"] = "Question: Short?\nFinal answer:"  # prompts and completions of several lengths
    batch = collated(tok, pairs)
    with torch.no_grad():
        trl = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["input_ids"], batch["completion_mask"])
        ours, out, positions = shared_prompt_logps(model, batch, tok.pad_token_id, attn)
    assert torch.allclose(ours, trl, atol=1e-4, rtol=1e-5), (ours - trl).abs().max()
    assert (trl != 0).all()
    kwargs, _ = layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], tok.pad_token_id, attn)
    assert kwargs["input_ids"].shape[0] == 8 and positions == kwargs["input_ids"].numel() < 0.7 * batch["input_ids"].numel()
    assert out.logits.shape[1] == len(kwargs["logits_to_keep"]) < kwargs["input_ids"].shape[1]


def test_rejected_tokens_do_not_see_the_chosen_ones(tiny_llama_dir, tok):
    """Another chosen completion leaves the rejected log-probs as they were (and the reverse)."""
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    pairs = synthetic_pairs(4)
    other = [dict(p, chosen=" no no no" if p["chosen"] == " yes" else " yes yes") for p in pairs]
    with torch.no_grad():
        a, _, _ = shared_prompt_logps(model, collated(tok, pairs), tok.pad_token_id, "sdpa")
        b, _, _ = shared_prompt_logps(model, collated(tok, other), tok.pad_token_id, "sdpa")
    assert not torch.allclose(a[:4], b[:4])          # the chosen log-probs changed
    assert torch.allclose(a[4:], b[4:], atol=1e-5)   # the rejected ones did not


def test_bad_layouts_are_refused(tok):
    batch = collated(tok, synthetic_pairs(2))
    with pytest.raises(ValueError, match="sdpa or eager"):
        layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 0, "flash_attention_2")
    batch["input_ids"][2, 1] += 1  # pair 0's rejected row under another prompt
    with pytest.raises(ValueError, match="pair 0 .* different \\(or empty\\) prompts"):
        layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 0)


def _trainer(model, tok, out, shared, **kw):
    use_recipe({"askdraft_shared_prompt": shared})
    args = AxolotlDPOConfig(output_dir=str(out), per_device_train_batch_size=8, max_steps=1, learning_rate=1e-2,
                            beta=0.1, logging_steps=1, report_to=[], save_strategy="no", seed=0, bf16=False,
                            use_cpu=True, dataloader_num_workers=0, **kw)
    trainer = AskDraftDPOTrainer(model=model, args=args, processing_class=tok,
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
                                 train_dataset=Dataset.from_list(synthetic_pairs(8)))
    torch.manual_seed(1)
    with torch.no_grad():  # a large random adapter: policy far from the reference
        for name, p in trainer.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    return trainer


@pytest.mark.parametrize("precompute", [False, True])
def test_one_real_step_equals_the_two_row_step(tiny_llama_dir, tok, tmp_path, precompute):
    """Same loss, metrics and update with the reference scored per step or once before training
    (TRL scores it in the trainer's __init__: the registered recipe's key reaches it there)."""
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    trainers = {shared: _trainer(copy.deepcopy(base), tok, tmp_path / str(shared), shared,
                                 precompute_ref_log_probs=precompute) for shared in (False, True)}
    assert [t.shared_prompt for t in trainers.values()] == [False, True]
    assert take_recipe().askdraft_shared_prompt is False  # taken once: a trainer built later gets the defaults
    if precompute:
        refs = {s: torch.tensor(t.train_dataset["ref_rejected_logps"]) for s, t in trainers.items()}
        assert torch.allclose(refs[True], refs[False], atol=1e-4) and (refs[False] != 0).all()
    before = {n: p.detach().clone() for n, p in trainers[True].model.named_parameters() if p.requires_grad}
    for t in trainers.values():
        t.train()
    logs = {s: t.state.log_history[0] for s, t in trainers.items()}
    for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert logs[True][key] == pytest.approx(logs[False][key], rel=1e-4, abs=1e-5), key
    assert abs(logs[False]["loss"] - 0.6931) > 1e-3  # not the degenerate policy == reference
    trained = {n: p for n, p in trainers[True].model.named_parameters() if p.requires_grad}
    other = dict(trainers[False].model.named_parameters())
    assert trained and all(torch.allclose(p, other[n], atol=1e-5) for n, p in trained.items())
    assert not all(torch.allclose(p, before[n]) for n, p in trained.items())  # the step moved the adapter
