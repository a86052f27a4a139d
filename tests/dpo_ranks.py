"""Run by tests/test_multi_gpu.py under torchrun (gloo, CPU): phase C's trainer (AskDraftDPOTrainer,
seed Cal + seed Dr) on a tiny Llama, 32 synthetic pairs, micro-batch 4, an effective batch of 16
(accumulation 4 / world), 4 optimizer steps; rank 0 writes the Trainer's log_history as JSON.
usage: torchrun --nproc_per_node N tests/dpo_ranks.py MODEL_DIR OUT_JSON"""
import json
import os
import sys

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from axolotl.core.trainers.dpo.args import AxolotlDPOConfig  # noqa: E402
from askdraft_dpo.trainer import AskDraftDPOTrainer  # noqa: E402
from conftest import synthetic_pairs  # noqa: E402


def main(model_dir, out):
    world = int(os.environ.get("WORLD_SIZE", 1))
    args = AxolotlDPOConfig(output_dir=os.path.dirname(out), per_device_train_batch_size=4,
                            gradient_accumulation_steps=4 // world, max_steps=4, learning_rate=1e-2,
                            beta=0.1, logging_steps=1, report_to=[], save_strategy="no", seed=0, bf16=False,
                            use_cpu=True, dataloader_num_workers=0, ddp_backend="gloo" if world > 1 else None)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    trainer = AskDraftDPOTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(model_dir),
                                 peft_config=lora, train_dataset=Dataset.from_list(synthetic_pairs(32)))
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, the same on every rank: margins and drops are not all ties
        for name, p in trainer.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    trainer.drop_fraction = 0.15
    trainer.set_phase(0.1, "seed", "seed")
    trainer.train()
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"world": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
