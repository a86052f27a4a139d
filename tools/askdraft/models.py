"""One loader for the models the tools run (drafts, attribution; lm-eval loads its own through
HFLM): a base model dir plus an optional PEFT adapter, float32 on CPU and bf16 on a GPU."""
from pathlib import Path

from askdraft.io import InputError


def check_dirs(base, adapter=None):
    """A clear error, before anything loads, for a base or adapter directory that is not one."""
    for d, marker in ((base, "config.json"), (adapter, "adapter_config.json")):
        if d is not None and not (Path(d) / marker).is_file():
            raise InputError(d, None, f"model directory not found (no {marker})")


def load_model(base, adapter=None, device=None, load_in_4bit=False, merge=False):
    """(model, tokenizer) in eval mode, no gradients. load_in_4bit: an NF4 base (a 7B on an 8 GB
    card, as in training); merge: fold the adapter into the weights (faster generation; not with
    4-bit). The tokenizer pads with EOS where it has no pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dirs(base, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw = {"dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kw["dtype"])
        kw["device_map"] = {"": device}
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, **kw)
    if not load_in_4bit:
        model = model.to(device)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
        if merge and not load_in_4bit:
            model = model.merge_and_unload()
    model.eval().requires_grad_(False)
    return model, tok
