"""The recipes as users run them on the base models they have (issue 18).

For each family of tests/tokenizer_families.py (Llama-2 and Mistral SentencePiece, Gemma
SentencePiece without a dummy prefix, Llama-3 and Qwen2.5 byte-level BPE; Llama-2 also with
`legacy: true`), on a tiny random model of the family's architecture, the whole chain runs once
(a fixture per family):
`askdraft base-model` -> `askdraft sft-data` (phase A and B rows) -> one `axolotl train` step of
SFT on both (recipes/phase_a.yaml + cpu profile, in this process) -> `askdraft drafts` for a few
questions with that adapter -> answer-mode pairs -> one `axolotl train` step of phase C
(recipes/phase_c.yaml) -> `askdraft evaluate` (lm-eval, tasks strategyqa and strategyqa_draft).

Then, token for token: the rows Axolotl prepared (input_ids + the labels mask) are the context +
continuation lm-eval builds for the same question, and lm-eval's log-likelihood of the answer is
a direct forward pass over Axolotl's tokens.

Findings (transformers 5.16.1, axolotl 0.19.0, lm-eval 0.4.11, TRL 1.9):
- Llama-2 has no pad token: axolotl does not refuse, it sets pad = "</s>" for LlamaTokenizer
  classes (its LLAMA_DEFAULT_EOS_TOKEN) and eos for any other tokenizer without one (Mistral,
  Llama-3); TRL, `askdraft drafts` and lm-eval also fall back to eos. Padded positions carry
  label -100 / attention 0, so pad = eos is harmless, and eos itself is still trained on.
- A BOS written as text before the prompt in one segment broke the identity for the
  SentencePiece families: transformers 5 loads Llama-2's tokenizer with a Metaspace pre-tokenizer
  that puts "▁" only at the start of a text, so "<s>Question" encoded as "Qu","es","tion" while
  lm-eval scores BOS + "▁Question". `askdraft sft-data` now writes BOS as a segment of its own.
- " yes" alone encodes as "▁yes" (transformers 5's Metaspace does not double the prefix, unlike
  the sentencepiece library, which gives "▁", "▁yes"), the same token lm-eval's joint encoding of
  context + continuation ends with; so the completion segment keeps its leading space.
"""
import json
import os
from pathlib import Path

import pytest
import yaml

from askdraft import REPO_ROOT, templates
from conftest import strategyqa_split
from tokenizer_families import FAMILIES, build, sentencepiece_ids

N_TRAIN, N_DEV = 8, 4  # questions of the real split: 8 phase A + 8 phase B rows, one SFT step
N_PAIRS = 4            # drafts of the first 4 training questions -> 4 pairs, one phase C step
NAMES = list(FAMILIES)


def split_rows(name, n):
    return [json.loads(x) for x in (strategyqa_split() / name).read_text().splitlines()[:n]]


@pytest.fixture(scope="session")
def corpus():
    """Training text for the tokenizers: the prompts and targets of 300 real questions, so the
    tiny vocabularies tokenize StrategyQA the way real ones do (whole words, merges)."""
    rows = split_rows("strategyqa_train_cot.jsonl", 300)
    texts = [t for r in rows for t in (
        templates.answer_prompt(r["question"]) + templates.answer_completion(r["teacher_final"]),
        templates.draft_prompt(r["question"]) + templates.draft_completion(r["teacher_cot"], r["teacher_final"]))]
    # the question drafts outweigh the answers in 300 rows; a real vocabulary has " yes" / " no" whole
    return texts + [f"Final answer: {a}" for a in templates.ANSWERS] * 200


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, corpus):
    """{family: model dir} as the Hub repo ships it (tokenizer files + a tiny random model), built lazily."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = build(name, tmp_path_factory.mktemp(f"hub-{name}"), corpus)
        return built[name]
    return get


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", NAMES)
def test_token_counter_counts_as_the_families_tokenizer(name, family_dirs, corpus):
    """`askdraft recipe --pack-rows` counts tokens with the `tokenizers` library alone where the
    tokenizer loads tokenizer.json verbatim (else transformers): the same count either way."""
    from askdraft.sft_data import token_counter
    tok = tokenizer(family_dirs(name))
    count = token_counter(family_dirs(name))
    texts = corpus[:200] + [" leading space", "two\n\nlines", "<s> in text </s>", "ünïcödé 123456"]
    assert [count(t) for t in texts] == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


def tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------- the tokenizers (fast)

@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_is_the_familys_kind(family_dirs, corpus, name):
    fam, path = FAMILIES[name], family_dirs(name)
    tok = tokenizer(path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (fam.bos, fam.eos, fam.pad)
    ids = tok("Question: Is it red?").input_ids
    assert (ids[0] == tok.bos_token_id) == (fam.bos is not None)  # BOS added to every encoding
    odd = "Is Zoë 😀 über?"  # characters the tiny vocabulary never saw
    odd_ids = tok(odd, add_special_tokens=False).input_ids
    assert tok.decode(odd_ids) == odd and tok.unk_token_id not in odd_ids  # byte fallback / byte-level
    if fam.sentencepiece:
        assert "<0xF0>" in tok.convert_ids_to_tokens(odd_ids)
        for text in corpus[:40]:  # the converted tokenizer is the SentencePiece model
            assert tok(text, add_special_tokens=False).input_ids == sentencepiece_ids(path / "tokenizer.model", text)
        assert tok.convert_ids_to_tokens(tok(" yes", add_special_tokens=False).input_ids) == ["▁yes"]
    else:
        assert tok.convert_ids_to_tokens(tok(" yes", add_special_tokens=False).input_ids) == ["Ġyes"]
        assert min(tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens) >= 256 + 1  # after the BPE vocab


@pytest.mark.parametrize("name, breaks", [("llama2", True), ("mistral", True), ("llama2-legacy", False),
                                          ("gemma", False), ("llama3", False)])
def test_bos_glued_to_the_prompt(family_dirs, name, breaks):
    """Why `askdraft sft-data` gives BOS a segment of its own: glued to the text, it changes how the
    first word is encoded wherever "▁" is prepended only at the start of a text (Llama-2 and Mistral
    as transformers 5 loads them); a segment of its own is what lm-eval scores for every family."""
    tok = tokenizer(family_dirs(name))
    prompt = templates.answer_prompt("Is it red?")
    scored = tok(prompt).input_ids  # what lm-eval encodes: the tokenizer's default, BOS added
    glued = tok(tok.bos_token + prompt, add_special_tokens=False).input_ids
    assert (glued != scored) == breaks
    assert [tok.bos_token_id] + tok(prompt, add_special_tokens=False).input_ids == scored


# ---------------------------------------------------------------- the chain, once per family

def in_dir(path, fn, *args, **kwargs):
    old = os.getcwd()
    os.chdir(path)
    try:
        return fn(*args, **kwargs)
    finally:
        os.chdir(old)


def axolotl_train(recipe):
    from axolotl.cli.main import cli
    cli.main(args=["train", str(recipe), "--launcher", "python"], prog_name="axolotl", standalone_mode=False)


def compose(phase, profiles, path, **keys):
    from askdraft import recipe
    cfg = recipe.compose(REPO_ROOT / "recipes" / f"{phase}.yaml", profiles)
    cfg.update(keys)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def lora_b_moved(adapter_dir):
    from safetensors.torch import load_file
    weights = load_file(Path(adapter_dir) / "adapter_model.safetensors")
    return any(t.abs().sum() > 0 for n, t in weights.items() if "lora_B" in n)


class Run:
    """Everything one family's chain wrote, plus what lm-eval built and scored."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, family_dirs):
    done = {}

    def get(name):
        if name not in done:
            done[name] = chain(name, family_dirs(name), tmp_path_factory.mktemp(f"run-{name}"))
        return done[name]
    return get


def chain(name, hub_dir, work):
    from lm_eval.models.huggingface import HFLM

    from askdraft import base_model, drafts, evaluate, pairs, sft_data
    from askdraft.data import FILES
    from askdraft.io import write_jsonl

    r = Run()
    r.work, r.hub = work, hub_dir
    data = work / "data"
    cot = split_rows(FILES["cot"], N_TRAIN)
    write_jsonl(data / FILES["cot"], cot)
    base_rows = {x["question"]: x for x in split_rows(FILES["baseline"], 2000)}
    write_jsonl(data / FILES["baseline"], [base_rows[x["question"]] for x in cot])
    write_jsonl(data / FILES["dev"], split_rows(FILES["dev"], N_DEV))

    r.base = base_model.build(str(hub_dir), out_root=work / "models/base", name=name)  # `askdraft base-model DIR`
    r.sft_report = sft_data.build(data, r.base, work / "sft")

    # SFT: phase A's recipe on phase A and phase B rows, one optimizer step
    sft_rows = [{"path": str(work / "sft" / f), "ds_type": "json", "type": "input_output"}
                for f in ("phase_a.jsonl", "phase_b.jsonl")]
    recipe = compose("phase_a", ["cpu"], work / "phase_a.yaml", base_model=str(r.base), datasets=sft_rows,
                     dataset_prepared_path=str(work / "prepared_sft"), output_dir=str(work / "sft_out"),
                     num_epochs=1, micro_batch_size=2 * N_TRAIN, gradient_accumulation_steps=1,
                     save_strategy="no", warmup_ratio=0.0)
    in_dir(work, axolotl_train, recipe)
    r.sft_adapter = work / "sft_out"
    from datasets import load_from_disk
    [info] = (work / "prepared_sft").glob("*/dataset_info.json")
    r.prepared = load_from_disk(str(info.parent))

    # drafts with the SFT adapter, answer-mode pairs, one phase C step on a fresh adapter
    r.drafts_report = drafts.run(r.base, name, adapter=r.sft_adapter, splits=("train",), data=data,
                                 out_root=work / "drafts", batch_size=N_PAIRS, limit=N_PAIRS, max_new_tokens=12)
    r.drafts = work / "drafts" / name / "train.jsonl"
    r.pairs, r.pairs_report = pairs.build(r.drafts, data / FILES["cot"], mode="answer", tokenizer=r.base,
                                          allow_empty=True)
    write_jsonl(work / "pairs.jsonl", r.pairs)
    dpo_data = [{"path": str(work / "pairs.jsonl"), "split": "train",
                 "type": {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}}]
    recipe = compose("phase_c", ["cpu", "dpo-fast"], work / "phase_c.yaml", base_model=str(r.base),
                     datasets=dpo_data, dataset_prepared_path=str(work / "prepared_c"),
                     output_dir=str(work / "c_out"), num_epochs=1, micro_batch_size=N_PAIRS,
                     gradient_accumulation_steps=1, save_strategy="no", warmup_ratio=0.0,
                     askdraft_schedule=[{"epochs": [1, 1], "beta": 0.1}])
    from trl import DPOTrainer
    r.trl_rows, real_prepare = [], DPOTrainer._prepare_dataset

    def prepare_spy(self, *args, **kwargs):  # the pairs as TRL tokenized them (in a worker process)
        out = real_prepare(self, *args, **kwargs)
        r.trl_rows += list(out)
        return out
    DPOTrainer._prepare_dataset = prepare_spy
    try:
        in_dir(work, axolotl_train, recipe)
    finally:
        DPOTrainer._prepare_dataset = real_prepare
    r.dpo_adapter = work / "c_out"

    # lm-eval over the training questions (so its prompts meet Axolotl's rows), with the SFT
    # adapter; the spy keeps the (context, continuation) token ids lm-eval builds and scores
    r.scored, real = [], HFLM._loglikelihood_tokens

    def spy(self, requests, *args, **kwargs):
        out = real(self, requests, *args, **kwargs)
        r.scored += [(req, ll) for req, (ll, _greedy) in zip(requests, out)]
        r.lm = self
        return out
    HFLM._loglikelihood_tokens = spy
    try:
        r.accs = evaluate.evaluate(name, "A", r.base, ["strategyqa", "strategyqa_draft"], adapter=r.sft_adapter,
                                   drafts=r.drafts, dev=data / FILES["baseline"], limit=N_PAIRS,
                                   results=work / "results", batch_size=8)
    finally:
        HFLM._loglikelihood_tokens = real
    r.eval_rows = {t: [json.loads(x) for x in evaluate.eval_paths(work / "results", name, "A", t)[0].read_text().splitlines()]
                   for t in ("strategyqa", "strategyqa_draft")}
    return r


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_axolotl_pads_a_tokenizer_without_pad(family_dirs, tmp_path, name):
    """What `axolotl train recipes/phase_a.yaml --base_model <Hub repo>` does with the family's
    own tokenizer files (no `askdraft base-model` in between)."""
    from axolotl.cli.config import load_cfg
    from axolotl.loaders.tokenizer import load_tokenizer

    fam = FAMILIES[name]
    recipe = compose("phase_a", ["cpu"], tmp_path / "a.yaml", base_model=str(family_dirs(name)),
                     output_dir=str(tmp_path / "out"))
    tok = in_dir(tmp_path, lambda: load_tokenizer(load_cfg(str(recipe))))
    assert tok.pad_token == (fam.pad or fam.eos)  # Llama-2: "</s>", never a new token
    assert len(tok) == len(tokenizer(family_dirs(name)))
    assert tok.bos_token == fam.bos and tok.eos_token == fam.eos


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_chain_runs(runs, name):
    from transformers import AutoTokenizer

    r = runs(name)
    tok = AutoTokenizer.from_pretrained(r.base)
    fam = FAMILIES[name]
    assert tok.pad_token == (fam.pad or fam.eos)  # `askdraft base-model` sets pad = eos when missing
    assert r.sft_report["phase_a_rows"] == r.sft_report["phase_b_rows"] == N_TRAIN
    assert len(r.prepared) == 2 * N_TRAIN and lora_b_moved(r.sft_adapter)
    assert r.drafts_report["train"]["n"] == N_PAIRS
    assert len(r.pairs) == N_PAIRS - r.pairs_report["dropped"]["empty_draft"] >= 1
    assert lora_b_moved(r.dpo_adapter)
    assert set(r.accs) == {"strategyqa", "strategyqa_draft"} and all(len(v) == N_PAIRS for v in r.eval_rows.values())


def rows_by_prompt(r, tok):
    """{prompt text: (input_ids, number of masked prompt tokens)} of Axolotl's prepared rows."""
    out = {}
    for row in r.prepared:
        n_prompt = next(i for i, lab in enumerate(row["labels"]) if lab != -100)
        assert all(lab == -100 for lab in row["labels"][:n_prompt])
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]  # one masked prompt, then the target
        out[tok.decode(row["input_ids"][:n_prompt], skip_special_tokens=True).strip()] = (row["input_ids"], n_prompt)
    return out


def question_only_requests(r):
    """strategyqa's (question-only) requests among everything lm-eval scored, once each."""
    questions = [json.loads(x)["question"] for x in (r.work / "data/strategyqa_train_cot.jsonl").read_text().splitlines()]
    contexts = {templates.answer_prompt(q): q for q in questions[:N_PAIRS]}
    out = {}
    for (pair, ctx_ids, cont_ids), ll in r.scored:
        if pair[0] in contexts:
            out[pair] = (contexts[pair[0]], list(ctx_ids), list(cont_ids), ll)
    assert len(out) == 2 * N_PAIRS, list(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_trained_tokens_are_scored_tokens(runs, name):
    """Phase A: Axolotl's row == lm-eval's context ids + the gold continuation's ids + EOS, and the
    labels mask covers exactly continuation + EOS. Phase B: the masked prompt == the ids lm-eval
    encodes the draft request with for generation (strategyqa_cot)."""
    from transformers import AutoTokenizer

    r = runs(name)
    tok = AutoTokenizer.from_pretrained(r.base)
    rows = rows_by_prompt(r, tok)
    cot = [json.loads(x) for x in (r.work / "data/strategyqa_train_cot.jsonl").read_text().splitlines()]
    gold = {x["question"]: x["teacher_final"] for x in cot}
    matched = 0
    for (context, continuation), (question, ctx_ids, cont_ids, _) in question_only_requests(r).items():
        if continuation != templates.answer_completion(gold[question]):
            continue
        ids, n_prompt = rows[context]
        assert ids[:n_prompt] == ctx_ids, (tok.convert_ids_to_tokens(ids[:n_prompt]), tok.convert_ids_to_tokens(ctx_ids))
        assert ids[n_prompt:] == cont_ids + [tok.eos_token_id], (tok.convert_ids_to_tokens(ids[n_prompt:]),
                                                                tok.convert_ids_to_tokens(cont_ids))
        assert (ids[0] == tok.bos_token_id) == (FAMILIES[name].bos is not None)
        matched += 1
    assert matched == N_PAIRS
    for x in cot:  # phase B's prompts, as lm-eval encodes a generation context
        prompt = templates.draft_prompt(x["question"])
        lm_ids = r.lm.tok_batch_encode([prompt])[0][0].tolist()
        ids, n_prompt = rows[prompt]
        assert ids[:n_prompt] == lm_ids, (tok.convert_ids_to_tokens(ids[:n_prompt]), tok.convert_ids_to_tokens(lm_ids))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_answer_logprob_two_ways(runs, name):
    """lm-eval's log-likelihood of " yes" / " no" == a forward pass of base + SFT adapter (loaded
    with transformers + peft) over Axolotl's own tokens, summed over the continuation."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = runs(name)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(r.base, dtype=torch.float32),
                                      r.sft_adapter).eval()
    rows = rows_by_prompt(r, AutoTokenizer.from_pretrained(r.base))
    question_only = question_only_requests(r)
    gold = {x["question"]: x["teacher_final"]
            for x in map(json.loads, (r.work / "data/strategyqa_train_cot.jsonl").read_text().splitlines())}
    assert len(r.scored) >= 4 * N_PAIRS  # strategyqa + strategyqa_draft, yes and no
    for ((context, continuation), ctx_ids, cont_ids), ll in r.scored:
        ids = list(ctx_ids) + list(cont_ids)
        pair = (context, continuation)
        if pair in question_only and continuation == templates.answer_completion(gold[question_only[pair][0]]):
            row_ids, n_prompt = rows[context]  # the gold answer's training row: Axolotl's tokens, less its EOS
            ids, ctx_ids = row_ids[:-1], row_ids[:n_prompt]
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        direct = sum(logp[i - 1, ids[i]].item() for i in range(len(ctx_ids), len(ids)))
        assert direct == pytest.approx(ll, abs=2e-4), (context[-40:], continuation)
    # the per-question files keep lm-eval's numbers
    for task, task_rows in r.eval_rows.items():
        for row in task_rows:
            for answer, ll in row["loglik"].items():
                assert any(abs(v - ll) < 1e-6 for ((c, cont), _, _), v in r.scored
                           if row["question"] in c and cont == templates.answer_completion(answer)), (task, row)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_dpo_tokens_are_scored_tokens(runs, name):
    """Phase C: TRL's prompt ids and chosen ids (+ EOS, which TRL appends) for each pair == the
    context and continuation ids lm-eval's strategyqa_draft scores for that question and draft."""
    from transformers import AutoTokenizer

    r = runs(name)
    tok = AutoTokenizer.from_pretrained(r.base)
    scored = {pair: (list(ctx), list(cont)) for (pair, ctx, cont), _ in r.scored}
    assert len(r.trl_rows) == len(r.pairs)
    for row in r.trl_rows:
        ctx_ids, cont_ids = scored[(row["prompt"], row["chosen"].removesuffix(tok.eos_token))]
        assert row["prompt_ids"] == ctx_ids, (tok.convert_ids_to_tokens(row["prompt_ids"]), tok.convert_ids_to_tokens(ctx_ids))
        assert row["chosen_ids"] == cont_ids + [tok.eos_token_id]


def test_dpo_plugin_leaves_later_sft_configs_alone():
    """The chain trains SFT after phase C in one process (as a user's notebook or run_stages can):
    axolotl calls every loaded plugin's hooks, so askdraft_dpo must not touch an SFT trainer."""
    from askdraft_dpo import AskDraftDPOPlugin

    assert AskDraftDPOPlugin().add_callbacks_post_trainer({"plugins": ["askdraft_fastprep.FastPrepPlugin"]}, object()) == []
