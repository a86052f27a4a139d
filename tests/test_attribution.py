"""Attribution on a tiny random Llama with a BPE tokenizer trained here (no Hub, no mocks)."""
import json
import runpy
import sys

import numpy as np
import pytest
import torch

from askdraft import REPO_ROOT
from askdraft.attribution import (attribute, bootstrap_ci, draft_char_span, draft_share,
                                  draft_token_span, encode, load_model, main)
from askdraft.templates import answer_prompt

Q = "Could a llama swim across the Atlantic?"
D = "Llamas swim a little? Can llamas swim far? Tentative answer: no"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    # no "yes" in the corpus, so " yes" splits into several tokens: the multi-token path
    corpus = [answer_prompt(Q, D), "Final answer: no", "Is the sky blue?",
              "Llamas are camelids from South America. Tentative answer:"] * 3
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir, device="cpu")


# ---- (a) IG completeness, against captum's delta and an independent forward pass

# zero needs many steps: RMSNorm makes f jump near the zero end of the path (see attribution.py)
@pytest.mark.parametrize("answer,baseline,n_steps", [("yes", "pad", 32), ("no", "pad", 32),
                                                     ("yes", "zero", 256)])
def test_ig_completeness(loaded, answer, baseline, n_steps):
    model, tok = loaded
    rec = attribute(model, tok, Q, D, answer, n_steps=n_steps, baseline=baseline)
    e = encode(tok, Q, D, answer)
    assert (len(e["answer_ids"]) > 1) == (answer == "yes")  # " yes" tests the multi-token path
    n, k = len(e["ids"]), len(e["answer_ids"])
    emb = model.get_input_embeddings()
    ids = torch.tensor(e["ids"] + e["answer_ids"])[None]

    def logprob(**inputs):
        with torch.no_grad():
            lp = model(**inputs).logits[0, n - 1:n - 1 + k].log_softmax(-1)
        return lp.gather(-1, torch.tensor(e["answer_ids"])[:, None]).sum().item()

    f_in = logprob(input_ids=ids)
    x = emb(ids).detach()
    # the baseline by hand: BOS (position 0) kept, pad (here eos) or zero elsewhere
    x[0, 1:n] = emb.weight[tok.eos_token_id] if baseline == "pad" else 0
    f_base = logprob(inputs_embeds=x)
    diff, total = f_in - f_base, sum(rec["attributions"])
    assert np.abs(rec["attributions"]).sum() > 0.1  # otherwise the checks below are vacuous
    assert rec["logprob"] == pytest.approx(f_in, abs=1e-4)
    assert rec["logprob_baseline"] == pytest.approx(f_base, abs=1e-4)
    tol = 1e-3 + 0.01 * abs(diff)
    assert total == pytest.approx(diff, abs=tol)
    assert rec["convergence_delta"] < tol
    assert rec["attributions"][0] == 0.0  # BOS is in the baseline too
    assert len(rec["tokens"]) == len(rec["attributions"]) == n


# ---- (b) the draft span

def span_text(prompt, offsets, span):
    return prompt[offsets[span[0]][0]:offsets[span[1] - 1][1]]


@pytest.mark.parametrize("question,draft", [
    (Q, D),
    (Q, Q),  # the draft repeats the question: found by position, not by searching the text
    (Q, "no"),
    ("Is the sky blue?", "Llamas are camelids from South America.\nTentative answer: yes"),
])
def test_draft_span_is_exactly_the_draft(loaded, question, draft):
    _, tok = loaded
    prompt, cs, ce = draft_char_span(question, draft)
    assert prompt[cs:ce] == draft and prompt.startswith(f"Question: {question}")
    e = encode(tok, question, draft, "yes")
    first, last = e["span"]
    offsets = e["offsets"]
    assert first > 0 and e["special"][0] == 1  # BOS is never draft
    assert tok.decode(e["ids"][first:last]).strip() == draft
    assert span_text(prompt, offsets, (first, last)).strip() == draft
    # straddling tokens: at most the glued separator space lies outside the draft
    assert offsets[first][0] >= cs - 1 and offsets[last - 1][1] == ce
    q_end = len(f"Question: {question}")
    assert not any(a < q_end for a, b in offsets[first:last] if b > a)
    assert all(b <= cs or a >= ce for a, b in offsets[:first] + offsets[last:])


def test_first_draft_token_straddles(loaded):
    _, tok = loaded
    e = encode(tok, Q, D, "yes")
    cs = e["draft_chars"][0]
    assert e["offsets"][e["span"][0]][0] == cs - 1  # " Llamas": glued-on space, counted as draft


def test_no_draft(loaded):
    model, tok = loaded
    prompt, cs, ce = draft_char_span(Q, None)
    assert (cs, ce) == (0, 0) and "Student draft" not in prompt
    assert draft_token_span([(0, 0), (0, 5), (5, 9)], 0, 0) == (0, 0)
    rec = attribute(model, tok, Q, None, "no", n_steps=4)
    assert rec["draft_span"] == [0, 0] and rec["share"] == 0.0


# ---- (c) the share and its aggregate

def test_share_by_hand():
    attr = [0.0, 1.0, -2.0, 3.0, -4.0]
    assert draft_share(attr, (2, 4)) == pytest.approx(0.5)  # (2 + 3) / 10
    assert draft_share(attr, (0, 5)) == pytest.approx(1.0)
    assert draft_share(attr, (0, 0)) == 0.0
    assert draft_share([0.0, 0.0], (0, 1)) == 0.0
    assert draft_token_span([(0, 0), (0, 4), (4, 9), (9, 14), (14, 15)], 5, 14) == (2, 4)


def test_share_matches_record(loaded):
    model, tok = loaded
    rec = attribute(model, tok, Q, D, "no", n_steps=8)
    a, (f, l) = np.abs(rec["attributions"]), rec["draft_span"]
    assert 0 < rec["share"] < 1
    assert rec["share"] == pytest.approx(a[f:l].sum() / a.sum())


def test_bootstrap_ci():
    assert bootstrap_ci([0.3] * 5) == pytest.approx((0.3, 0.3, 0.3))
    v = np.random.default_rng(1).uniform(size=50)
    m, lo, hi = bootstrap_ci(v, seed=3)
    assert lo < m < hi and bootstrap_ci(v, seed=3) == (m, lo, hi)
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(50), rel=0.2)


# ---- the CLI, end to end and on bad input

def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    drafts = write_rows(tmp_path / "dev_drafts.jsonl", [
        {"id": "q1", "question": Q, "draft": D, "tentative": "no", "answer": "no"},
        {"id": "q/2", "question": "Is the sky blue?", "draft": "Tentative answer: yes",
         "tentative": "yes"},  # gold from --dev
    ])
    dev = write_rows(tmp_path / "dev.jsonl", [
        {"question": "Is the sky blue?", "teacher_final": "yes"},
        {"question": Q, "teacher_final": "no"}])
    return drafts, dev


def test_cli_end_to_end(model_dir, files, tmp_path, monkeypatch):
    drafts, dev = files
    out, maps = tmp_path / "res" / "attr.json", tmp_path / "maps"
    script = REPO_ROOT / "tools" / "attention_tools.py"
    monkeypatch.setattr(sys, "argv", [
        str(script), "--base", str(model_dir), "--drafts", str(drafts), "--dev", str(dev),
        "--n-steps", "8", "--out", str(out), "--heatmaps", str(maps), "--num-heatmaps", "1"])
    with pytest.raises(SystemExit) as exit_:  # the script itself, in-process (a subprocess
        runpy.run_path(str(script), run_name="__main__")  # would re-import torch: ~20 s)
    assert exit_.value.code == 0
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["n_steps"] == 8 and res["adapter"] is None
    assert res["ci_low"] <= res["mean_share"] <= res["ci_high"]
    shares = [q["share"] for q in res["per_question"]]
    assert res["mean_share"] == pytest.approx(np.mean(shares))
    assert res["max_convergence_delta"] == max(q["convergence_delta"] for q in res["per_question"])
    assert [q["answer"] for q in res["per_question"]] == ["no", "yes"]
    pngs = list(maps.glob("*.png"))
    assert [p.name for p in pngs] == ["attribution_q1.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("row,msg", [
    ({"id": "x", "question": Q, "answer": "no"}, "missing field 'draft'"),
    ({"id": "x", "question": Q, "draft": 3, "answer": "no"}, "field 'draft' must be a string"),  # "" is a real draft
    ({"id": "x", "question": Q, "draft": "other", "answer": "no"}, "duplicate question with a different draft"),
    ({"id": "x", "question": Q, "draft": D, "answer": "maybe"}, "is not yes/no"),
    ({"id": "x", "question": "Unknown?", "draft": D}, "not in the dev file"),
    ({"id": "x", "question": Q, "draft": D, "answer": "yes"}, "disagrees"),
])
def test_cli_bad_drafts(model_dir, files, tmp_path, capsys, row, msg):
    drafts, dev = files
    with drafts.open("a") as f:
        f.write(json.dumps(row) + "\n")
    out = tmp_path / "attr.json"
    rc = main(["--base", str(model_dir), "--drafts", str(drafts), "--dev", str(dev),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{drafts}:3: " in err and msg in err
    assert not out.exists() and not list(tmp_path.glob(".attr.json*"))


def test_cli_missing_model(files, tmp_path, capsys):
    drafts, dev = files
    out = tmp_path / "attr.json"
    rc = main(["--base", str(tmp_path / "nope"), "--drafts", str(drafts), "--dev", str(dev),
               "--out", str(out)])
    assert rc == 2 and "model directory not found" in capsys.readouterr().err
    assert not out.exists()


def test_subcommand_registers():
    import argparse
    from askdraft.attribution import add_cli
    p = argparse.ArgumentParser()
    add_cli(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["attribution", "--base", "b", "--drafts", "d", "--out", "o"])
    assert args.n_steps == 32 and args.func.__name__ == "run"


def test_adapter(model_dir, loaded, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    model, tok = load_model(model_dir, tmp_path / "adapter", device="cpu")
    rec = attribute(model, tok, Q, D, "no", n_steps=8)
    plain = attribute(*loaded, Q, D, "no", n_steps=8)
    assert abs(rec["logprob"] - plain["logprob"]) > 1e-3  # the adapter is applied
    assert abs(sum(rec["attributions"]) - (rec["logprob"] - rec["logprob_baseline"])) < 0.05
