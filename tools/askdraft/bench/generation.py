"""`askdraft bench generation`: speed and memory of the two inference stages on any model dir:
drafts (batched generation, `askdraft drafts`' own `generate`) and eval scoring (a forward pass
over the answer prompts).

    askdraft bench generation --model DIR [--load-in-4bit] [--batch-sizes 8,16,24,32]
        [--continuous 256,1024 --cache-tokens 8192] [--new-tokens 128] [--batches 3] --out FILE

Prompts are StrategyQA's real questions (data/strategyqa/decompositions.jsonl); the scoring rows
are "Question: ...\\nDraft: <teacher draft>\\nFinal answer:", the longest prompts eval scores.
Every generation runs the full --new-tokens (min_new_tokens = max_new_tokens): the worst case
of a draft, and the only honest one for a model with random weights, which never writes the
stop string. One warm-up batch per batch size, then --batches timed batches (GPU-synchronised).
A row's `drafts_s_estimate` is the measured median seconds a batch times the batches that
`askdraft drafts` needs for train + dev (2289 questions): an estimate from measured batches.
--continuous adds rows of `askdraft drafts --engine continuous` (transformers' continuous batching
with a paged KV cache of --cache-tokens tokens, which bounds its memory), EOS off for the same
worst case; --cuda-graphs adds the same rows with the forward passes replayed as CUDA graphs. Each
continuous row says which share of its first --identity-rows drafts equals `generate`'s greedy
draft of the same question (bf16 sums in another order can flip a near-tie token).
"""
import datetime
import json
import statistics
import time

from askdraft import REPO_ROOT, git_commit, models, templates
from askdraft.drafts import generate, generate_continuous, release_continuous
from askdraft.io import positive_int, write_json

QUESTIONS = REPO_ROOT / "data" / "strategyqa" / "decompositions.jsonl"
DRAFT_QUESTIONS = 2289  # train + dev drafts of the default split (2000 + 289)
DEV_QUESTIONS = 289     # the dev drafts after phase C
IDENTITY_BATCH = 24     # generate's batch for the identity drafts: the gpu profile's DRAFT_BATCH, within 7 GiB at 7B


def prompts(n):
    """n (question, scoring prompt with its teacher draft), cycling through the file."""
    from askdraft.data import teacher_steps
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        draft = templates.draft_text(templates.teacher_draft(teacher_steps(r["decomposition"], r["facts"])), r["answer"])
        out.append((r["question"], templates.answer_prompt(r["question"], draft)))
    return out


def timed(fn, sync):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def drafts_estimate(batch_s, batch_size):
    """Seconds for the drafts of DRAFT_QUESTIONS questions: a batch's seconds x the batches they need."""
    return round(batch_s * -(-DRAFT_QUESTIONS // batch_size), 1)


def reset_peak(cuda):
    if cuda:
        import torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench(model, tok, batch_sizes, new_tokens, batches, progress=True):
    import torch
    from tqdm import tqdm

    cuda = model.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for bs in tqdm(batch_sizes, desc="batch sizes", disable=not progress):
        data = prompts(bs * (batches + 1))
        questions = [q for q, _ in data]
        reset_peak(cuda)
        gen_s = []
        for b in range(batches + 1):  # batch 0 warms up
            qs = questions[b * bs:(b + 1) * bs]
            s, _ = timed(lambda: generate(model, tok, qs, max_new_tokens=new_tokens, min_new_tokens=new_tokens), sync)
            gen_s.append(round(s, 4))
        gen_peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
        reset_peak(cuda)  # scoring's peak on its own: it holds batch x length x vocab fp32 log-probs
        tok.padding_side = "right"
        score_s = []
        for b in range(batches + 1):
            enc = tok([p for _, p in data[b * bs:(b + 1) * bs]], return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad():
                s, _ = timed(lambda: model(**enc, use_cache=False).logits.float().log_softmax(-1), sync)
            score_s.append(round(s, 5))
        tok.padding_side = "left"
        prompt_tokens = statistics.mean(len(tok(q)["input_ids"]) for q in questions)
        med = statistics.median(gen_s[1:])
        rows.append(dict(
            engine="generate", batch_size=bs, new_tokens=new_tokens, timed_batches=batches,
            draft_prompt_tokens_mean=round(prompt_tokens, 1),
            generate_s_per_batch=gen_s[1:], generate_s_median=med,
            new_tokens_per_s=round(bs * new_tokens / med, 1),
            drafts_s_estimate=drafts_estimate(med, bs),
            score_s_per_batch=score_s[1:],
            score_rows_per_s=round(bs / statistics.median(score_s[1:]), 1),
            generate_peak_reserved_gib=round(gen_peak, 3) if cuda else None,
            score_peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None))
    return rows


def bench_continuous(model, tok, batch_sizes, new_tokens, batches, cache_tokens, cuda_graphs=False,
                     identity_rows=24, progress=True):
    """Rows of `askdraft drafts --engine continuous`: each batch of questions goes to
    model.generate_batch at once (a paged KV cache of cache_tokens tokens), no EOS, so every draft
    runs new_tokens; tokens/s counts the tokens it returned. identical_share: the first
    identity_rows drafts of the first timed batch against `generate` on the same questions."""
    import torch
    from tqdm import tqdm

    cuda = model.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for bs in tqdm(batch_sizes, desc="continuous batching", disable=not progress):
        questions = [q for q, _ in prompts(bs * (batches + 1))]
        reset_peak(cuda)
        gen_s, new, texts = [], [], []
        for b in range(batches + 1):  # batch 0 warms up (captures CUDA graphs); the rest reuse its manager
            counts = []
            s, out = timed(lambda: generate_continuous(
                model, tok, questions[b * bs:(b + 1) * bs], max_new_tokens=new_tokens, cache_tokens=cache_tokens,
                token_counts=counts, cuda_graphs=cuda_graphs, eos_token_id=None), sync)
            gen_s.append(round(s, 4))
            new.append(sum(counts))
            texts.append(out)
        peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
        release_continuous(model)  # the next size gets a manager of its own
        k = min(identity_rows, bs)
        plain = [d for i in range(bs, bs + k, IDENTITY_BATCH) for d in generate(
            model, tok, questions[i:min(bs + k, i + IDENTITY_BATCH)], max_new_tokens=new_tokens, eos_token_id=None)]
        med = statistics.median(gen_s[1:])
        rows.append(dict(
            engine="continuous+graphs" if cuda_graphs else "continuous", batch_size=bs, cache_tokens=cache_tokens,
            identity_rows=k, identical_share=round(sum(a == b for a, b in zip(texts[1], plain)) / k, 4),
            new_tokens=new_tokens, timed_batches=batches,
            generate_s_per_batch=gen_s[1:], generate_s_median=med, new_tokens_per_batch=new[1:],
            new_tokens_per_s=round(statistics.median(new[1:]) / med, 1),
            drafts_s_estimate=drafts_estimate(med, bs),
            generate_peak_reserved_gib=round(peak, 3) if cuda else None))
    return rows


def add_arguments(ap):
    ap.add_argument("--model", required=True, help="model dir (config.json + weights + tokenizer)")
    ap.add_argument("--load-in-4bit", action="store_true", help="NF4 base, as the 7B recipes train it")
    ap.add_argument("--batch-sizes", default="8,16,24,32", help="comma-separated generation/scoring batch sizes")
    ap.add_argument("--new-tokens", type=positive_int, default=128)
    ap.add_argument("--batches", type=positive_int, default=3, help="timed batches per size (after one warm-up)")
    ap.add_argument("--continuous", default="",
                    help="also `askdraft drafts --engine continuous` rows: comma-separated requests per call")
    ap.add_argument("--cache-tokens", type=positive_int, default=8192,
                    help="the continuous rows' KV cache in tokens (0.5 MiB a token at the 7B shape in bf16)")
    ap.add_argument("--cuda-graphs", action="store_true", help="also the continuous rows with CUDA graphs")
    ap.add_argument("--identity-rows", type=positive_int, default=24,
                    help="continuous rows: drafts compared with `generate`'s of the same questions")
    ap.add_argument("--out", required=True)
    return ap


def cmd(args):
    import torch
    import transformers

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    model, tok = models.load_model(args.model, load_in_4bit=args.load_in_4bit)
    tok.padding_side = "left"
    rows = bench(model, tok, sizes, args.new_tokens, args.batches)
    if args.continuous:
        for graphs in (False, True) if args.cuda_graphs else (False,):
            rows += bench_continuous(model, tok, [int(x) for x in args.continuous.split(",")], args.new_tokens,
                                     args.batches, args.cache_tokens, graphs, args.identity_rows)
    cfg = model.config
    write_json(args.out, dict(
        schema=1, kind="inference", command="askdraft bench generation",
        options={k: v for k, v in vars(args).items() if k not in ("func", "cmd", "bench_cmd")},
        model=str(args.model), quant="nf4" if args.load_in_4bit else str(model.dtype),
        shape=dict(hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, vocab=cfg.vocab_size),
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
        rows=rows))
    for r in rows:
        print(f"{r['engine']} batch {r['batch_size']}: {r['new_tokens_per_s']} new tok/s, {r['generate_s_median']} s a batch, "
              f"drafts ~{r['drafts_s_estimate']} s, peak reserved {r['generate_peak_reserved_gib']} GiB generating"
              + (f"; scoring {r['score_rows_per_s']} rows/s, {r['score_peak_reserved_gib']} GiB" if "score_rows_per_s" in r else ""))
    return 0
