"""`askdraft drafts`: the student writes a draft for every train / dev question.

Each question is rendered with the draft template ("Question: ...\\nDraft:"), the model
continues it (batched, left-padded, greedy unless --temperature > 0) and stops at
"\\nFinal answer:" or EOS; the draft is the text before that, stripped. Output rows
{question, draft, tentative, answer} go to <out-root>/<name>/<split>.jsonl, with tentative
"yes" / "no" / "unparsed" and answer the gold teacher_final. An empty draft is kept as ""
(tentative "unparsed") and counted. In the conclusion-free draft form (`--draft-form questions`,
by default the data's MANIFEST.json `draft_form`) a draft that states no tentative answer is
what the student was taught: tentative "none", counted as no_conclusion, never as unparsed.
--engine continuous generates through transformers' continuous batching instead (a paged KV
cache of --cache-tokens tokens, no padding): the same greedy drafts, cut at the stop string
after generation; --cuda-graphs replays its forward passes as CUDA graphs (a GPU only), for a
model whose decode step is bound by kernel launches (a 4-bit 7B). speed.json beside REPORT.json
has this run's generation seconds and new tokens per split (a resumed split: the rows it generated);
REPORT.json describes the drafts alone, the same after a rerun.

Resumable: each finished batch is appended (and flushed) to <split>.jsonl.partial; a restart
keeps those rows and generates only the rest; the final file is renamed into place at the end,
and a split whose final file already covers every question is skipped without loading the model.
One writer at a time: a run holds a lock on <out-root>/<name>/, and a second run (a rerun while the
killed run's process still lives, e.g. an orphan of a killed `make`) waits for it, then resumes or
skips. Two writers would each generate the rest with both processes' threads fighting over the same
cores, and the second to finish would find its .partial already removed.
"""
import os
import time
from pathlib import Path

from askdraft import models, templates
from askdraft.data import FILES
from askdraft.io import InputError, atomic_open, dumps, exclusive, positive_int, write_json, write_jsonl
from askdraft.records import DRAFT_FIELDS as FIELDS, read_drafts, read_split
from askdraft_dpo.rows import CONTROL

SPLITS = {"train": FILES["cot"], "dev": FILES["dev"], "val": FILES["val"]}


def load_model(base, adapter=None, device=None, load_in_4bit=False):
    """askdraft.models.load_model with the adapter merged and left padding, for batched generation."""
    model, tok = models.load_model(base, adapter, device, load_in_4bit, merge=True)
    tok.padding_side = "left"
    return model, tok


def generate(model, tok, questions, max_new_tokens=96, temperature=0.0, top_p=1.0, engine="generate",
             cache_tokens=None, cuda_graphs=False, token_counts=None, **generate_kwargs):
    """Drafts for a batch of questions (the text before "\\nFinal answer:", stripped).
    engine "generate": model.generate on the left-padded batch; "continuous": generate_continuous.
    generate_kwargs go to the generation config (the speed bench sets min_new_tokens).
    token_counts: a list that gets each draft's count of new tokens (up to its EOS or stop)."""
    if engine == "continuous":
        return generate_continuous(model, tok, questions, max_new_tokens, temperature, top_p, cache_tokens,
                                   token_counts, cuda_graphs, **generate_kwargs)
    if engine != "generate":
        raise InputError("--engine", None, f"unknown engine {engine!r}; choose from {ENGINES}")
    import torch

    enc = tok([templates.draft_prompt(q) for q in questions], return_tensors="pt", padding=True)
    enc = enc.to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, **{**generation_settings(tok, max_new_tokens, temperature, top_p), **generate_kwargs},
                             stop_strings=[templates.DRAFT_STOP], tokenizer=tok)
    new = out[:, enc["input_ids"].shape[1]:]
    if token_counts is not None:  # a finished row is padded after its EOS or stop string
        token_counts.extend((new != tok.pad_token_id).sum(1).tolist())
    return cut_drafts(tok.batch_decode(new, skip_special_tokens=True))


def generation_settings(tok, max_new_tokens, temperature, top_p):
    """What both engines generate with: greedy unless temperature > 0."""
    sample = temperature > 0
    return {"max_new_tokens": max_new_tokens, "do_sample": sample, "top_k": None,
            "temperature": temperature if sample else None, "top_p": top_p if sample else None,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def cut_drafts(texts):
    """Each generated text up to the stop string, stripped, without control characters (a model can
    emit a NUL or ESC byte token; every reader of a drafts file refuses them)."""
    return [CONTROL.sub("", t.split(templates.DRAFT_STOP)[0]).strip() for t in texts]


ENGINES = ("generate", "continuous")
SPEED_FILE = "speed.json"  # this run's generation speed per split (run-dependent, unlike REPORT.json)
CACHE_BLOCK = 32  # tokens a block of the paged KV cache
MAX_BATCH_TOKENS = 1024  # tokens a forward of continuous batching (prefill chunks + one a running draft)


def generate_continuous(model, tok, questions, max_new_tokens=96, temperature=0.0, top_p=1.0, cache_tokens=None,
                        token_counts=None, cuda_graphs=False, **generate_kwargs):
    """Drafts through transformers' continuous batching (model.generate_batch): a paged KV cache
    (cache_tokens tokens; default: transformers sizes it from free GPU memory), requests scheduled as
    cache blocks free up, no padding. It has no stop strings: a draft runs to EOS or
    max_new_tokens and is cut at the stop string afterwards, so greedy drafts are generate's.
    The manager (its cache, and on a GPU its CUDA graphs, ~30 s to capture) stays on the model for
    the next call with the same settings: release_continuous(model) frees it.
    token_counts: a list that gets each request's count of new tokens.
    cuda_graphs: capture and replay the forward passes as CUDA graphs (transformers turns them on by
    itself only for flash attention; sdpa needs a mask, padded to fixed shapes when captured). On a
    CPU transformers turns them off with a warning: the same drafts."""
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    config = GenerationConfig(**{**generation_settings(tok, max_new_tokens, temperature, top_p), **generate_kwargs})
    sizes = {}
    if cache_tokens:  # both sizes given: else transformers sizes the other from free memory (all of a CPU's RAM)
        sizes = dict(block_size=CACHE_BLOCK, num_blocks=-(-cache_tokens // CACHE_BLOCK),
                     max_batch_tokens=min(cache_tokens, MAX_BATCH_TOKENS))
    graphs = {"use_cuda_graph": True} if cuda_graphs and model.device.type == "cuda" else {}
    cb = ContinuousBatchingConfig(**sizes, **graphs) if sizes or graphs else None
    prompts = [tok(templates.draft_prompt(q))["input_ids"] for q in questions]
    out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=cb,
                               progress_bar=False, warmup=model.device.type == "cuda", persistent_manager=True)
    if len(out) != len(prompts):  # generate_batch logs a failed request instead of raising
        raise RuntimeError(f"continuous batching returned {len(out)} of {len(prompts)} drafts (see the log above)")
    tokens = [r.generated_tokens for r in out.values()]
    if token_counts is not None:
        token_counts.extend(len(t) for t in tokens)
    return cut_drafts(tok.batch_decode(tokens, skip_special_tokens=True))


def release_continuous(model):
    """Free the continuous-batching manager generate_continuous left on the model (none: a no-op)."""
    model.destroy_cached_continuous_batching_manager()


def draft_row(question, draft, answer, form="tentative"):
    missing = "unparsed" if templates.concludes(form) else "none"
    return {"question": question, "draft": draft,
            "tentative": templates.parse_tentative(draft) or missing, "answer": answer}


def load_done(path, gold):
    """{question: row} already written to `path` (a final or .partial file), read by
    records.read_drafts(resume=True): a torn last line (a kill mid-write) is ignored; anything
    else malformed is an error naming the line. Rows of questions outside `gold` are kept
    (the caller filters them)."""
    return {r["question"]: {k: r[k] for k in FIELDS}
            for r in read_drafts(path, gold=gold, gold_path="the split file", unknown="keep", resume=True)}


def counts(rows):
    n = len(rows)
    right = sum(r["tentative"] == r["answer"] for r in rows)
    no_conclusion = sum(r["tentative"] == "none" for r in rows)
    return {"n": n, "unparsed": sum(r["tentative"] == "unparsed" for r in rows),
            "no_conclusion": no_conclusion, "empty": sum(not r["draft"] for r in rows),
            "tentative_accuracy": round(right / n, 4) if n > no_conclusion else None}


def draft_split(split_file, out, model_fn, batch_size=16, limit=None, form="tentative", **gen):
    """Write `out` for the questions of `split_file`; model_fn() loads the model on first need."""
    from tqdm import tqdm

    check_sizes(batch_size, limit)
    rows = read_split(split_file)
    gold = {r["question"]: r["teacher_final"] for r in rows[:limit]}
    out, partial = Path(out), Path(f"{out}.partial")
    done = load_done(out, gold) if out.is_file() else {}
    if done and all(q in done for q in gold):
        return {**counts([done[q] for q in gold]), "skipped": True}
    if partial.is_file():
        done.update(load_done(partial, gold))
    done = {q: r for q, r in done.items() if q in gold}
    todo = [q for q in gold if q not in done]
    with atomic_open(partial) as f:  # rewrite what survived, without a torn tail
        f.writelines(dumps(done[q]) + "\n" for q in gold if q in done)
    seconds, new_tokens = 0.0, []
    if todo:
        model, tok = model_fn()
        start = time.perf_counter()
        with open(partial, "a", encoding="utf-8") as f:
            bar = tqdm(total=len(gold), initial=len(gold) - len(todo), desc=f"drafts {out.name}", unit="q")
            try:
                for i in range(0, len(todo), batch_size):
                    batch = todo[i:i + batch_size]
                    for q, d in zip(batch, generate(model, tok, batch, token_counts=new_tokens, **gen)):
                        done[q] = draft_row(q, d, gold[q], form)
                        f.write(dumps(done[q]) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    bar.update(len(batch))
            finally:
                release_continuous(model)
            bar.close()
        seconds = time.perf_counter() - start
    final = [done[q] for q in gold]
    write_jsonl(out, final)
    partial.unlink(missing_ok=True)
    # this run's generation only (a resumed split's earlier rows are not in it)
    speed = {"generated": len(new_tokens), "new_tokens": sum(new_tokens), "generate_s": round(seconds, 2),
             "new_tokens_per_s": round(sum(new_tokens) / seconds, 1) if seconds else None}
    return {**counts(final), "skipped": False, "speed": speed}


def check_sizes(batch_size, limit):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("--batch-size", None, f"must be a whole number >= 1, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError("--limit", None, f"must be a whole number >= 1 (the first N questions), got {limit!r}")


def run(base, name, adapter=None, splits=("train", "dev"), data="data", out_root="data/drafts",
        batch_size=16, limit=None, device=None, load_in_4bit=False, seed=0, draft_form=None, **gen):
    """Drafts for each split; returns {split: counts} and writes REPORT.json beside them.
    draft_form: the form the model was taught (default: the data's MANIFEST.json)."""
    from askdraft.data import draft_form as data_draft_form

    form = draft_form or data_draft_form(data)
    templates.concludes(form)
    loaded = []

    def model_fn():
        if not loaded:
            import torch
            torch.manual_seed(seed)  # only matters when sampling
            loaded.append(load_model(base, adapter, device, load_in_4bit))
        return loaded[0]

    check_sizes(batch_size, limit)
    models.check_dirs(base, adapter)
    for split in splits:
        if split not in SPLITS:
            raise InputError("--splits", None, f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    out_dir = Path(out_root) / name
    with exclusive(out_dir, "drafts"):
        return write_splits(out_dir, splits, data, model_fn, batch_size, limit, base, adapter, form, gen)


def write_splits(out_dir, splits, data, model_fn, batch_size, limit, base, adapter, form, gen):
    """run()'s work, under its lock on out_dir: each split's drafts, then REPORT.json."""
    report = {}
    for split in splits:
        report[split] = draft_split(Path(data) / SPLITS[split], out_dir / f"{split}.jsonl", model_fn,
                                    batch_size=batch_size, limit=limit, form=form, **gen)
        c = report[split]
        print(f"{out_dir / split}.jsonl: {c['n']} drafts ({form} form), {c['unparsed']} unparsed, "
              f"{c['no_conclusion']} without a conclusion, {c['empty']} empty, "
              f"tentative accuracy {c['tentative_accuracy']}" + (" (already done)" if c["skipped"] else ""))
    write_json(out_dir / "REPORT.json", {"base": str(base), "adapter": adapter and str(adapter),
                                         "draft_form": form, "generation": gen,
                                         "splits": {s: {k: v for k, v in c.items() if k not in ("skipped", "speed")}
                                                    for s, c in report.items()}})
    speed = {s: c["speed"] for s, c in report.items() if "speed" in c}
    if speed:
        write_json(out_dir / SPEED_FILE, speed)
    return report


def cmd(args):
    run(args.base, args.name, args.adapter, args.splits.split(","), args.data, args.out_root,
        args.batch_size, args.limit, args.device, args.load_in_4bit, args.seed, args.draft_form,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, engine=args.engine, cache_tokens=args.cache_tokens,
        cuda_graphs=args.cuda_graphs)


def add_cli(sub):
    p = sub.add_parser("drafts", help="the student's drafts for train/dev -> data/drafts/<name>/")
    p.add_argument("--base", required=True, help="model dir (e.g. models/cot_phaseB/merged)")
    p.add_argument("--adapter", help="optional PEFT adapter dir applied on --base")
    p.add_argument("--name", required=True, help="output folder name under --out-root")
    p.add_argument("--splits", default="train,dev")
    p.add_argument("--data", default="data", help="folder with the split files")
    p.add_argument("--out-root", default="data/drafts")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="for sampling")
    p.add_argument("--engine", choices=ENGINES, default="generate",
                   help="generate: padded batches; continuous: transformers' continuous batching (paged KV cache)")
    p.add_argument("--cache-tokens", type=positive_int,
                   help="continuous: KV cache size in tokens (bounds memory; default: sized from free memory)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="continuous on a GPU: replay forward passes as CUDA graphs (a launch-bound decode, e.g. a 4-bit 7B)")
    p.add_argument("--limit", type=positive_int, help="first N questions of each split")
    p.add_argument("--draft-form", choices=templates.DRAFT_FORMS,
                   help="the form the model was taught (default: --data's MANIFEST.json draft_form)")
    p.add_argument("--device", help="default: cuda if available (bf16), else cpu (fp32)")
    p.add_argument("--load-in-4bit", action="store_true", help="NF4 base (bitsandbytes, GPU)")
    p.set_defaults(func=cmd)
