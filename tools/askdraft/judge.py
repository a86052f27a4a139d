"""`askdraft judge`: an LLM judge compares the clarifying questions of two models' drafts.

Each dev question is judged twice, with the drafts in both orders (A/B swapped), through the
OpenAI chat API of any compatible server. Model 1 wins a question only if both orders prefer
it, loses only if both prefer model 2, and ties otherwise (a split verdict is position bias,
not preference). The win-rate counts ties half, with a bootstrap CI from askdraft.stats.

Every usable answer is cached on disk under a hash of model + messages + params, so a re-run
makes no repeated call and a killed run resumes. A failed call (server error or timeout
after retries with exponential back-off) or an unusable answer (no JSON verdict A/B/tie)
marks only its question as failed; neither is cached, so the next run retries them. The API key
comes only from the environment and is never logged or written.

`--mode letter` (the constrained mode, for small local judges that never write the JSON) asks
for one letter, A or B, with at most a few tokens; where the server returns log-probs (vLLM,
OpenAI) the verdict is the likelier of the two letters among the first token's top log-probs,
else the first standalone A or B of the reply. A small model's letter verdict is a pipeline
check, not a measurement of question quality.

`--serve MODEL_DIR` starts `transformers serve MODEL_DIR` on a free localhost port for the
duration of the run and judges with it (e.g. the embedded model as its own judge: a pipeline
check, not a measurement of question quality).
"""
import contextlib
import hashlib
import json
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from tqdm import tqdm

from askdraft import stats, templates
from askdraft.io import InputError, positive_int, sha256_file, write_json, write_jsonl
from askdraft.judge_server import PLACEHOLDER_KEY, JudgeError, api_key, served  # noqa: F401 (judge.X for users)
from askdraft.records import drafts_by_question

ORDERS = ("12", "21")            # "12": model 1's draft is A; "21": model 1's draft is B
RETRY_STATUS = {408, 409, 429}     # plus every 5xx
MODES = ("json", "letter")
LETTER_RE = re.compile(r"\b(A|B)\b")


# ---------------------------------------------------------------- inputs
def load_drafts(path):
    """{question: row} from a drafts JSONL (records.read_drafts: an empty draft is a real
    outcome of `askdraft drafts` and is judged as it is); rows keep their `_line`."""
    return drafts_by_question(path)


def match_drafts(path_1, path_2, limit=None):
    """[(question, draft_1, draft_2)] in file 1's order; every question must be in both files."""
    d1, d2 = load_drafts(path_1), load_drafts(path_2)
    for mine, other, mine_path, other_path in ((d1, d2, path_1, path_2), (d2, d1, path_2, path_1)):
        for q, row in mine.items():
            if q not in other:
                raise InputError(mine_path, row["_line"], f"question not in {other_path}: {q!r}")
    items = [(q, d1[q]["draft"].strip(), d2[q]["draft"].strip()) for q in d1]
    return items[:limit] if limit else items


def judge_messages(question, draft_a, draft_b, letter=False):
    v = dict(question=question, draft_a=draft_a, draft_b=draft_b, letter=letter)
    return [{"role": "system", "content": templates.render("judge.jinja", "system", **v)},
            {"role": "user", "content": templates.render("judge.jinja", "user", **v)}]


# ---------------------------------------------------------------- answers
def parse_verdict(text):
    """("A" | "B" | "tie", reason) from the judge's answer: the first JSON object in it that
    has a "winner" field (code fences and chatter around it are ignored). ValueError if none."""
    decoder = json.JSONDecoder()
    start = (text or "").find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "winner" in obj:
            winner = str(obj["winner"]).strip()
            norm = {"a": "A", "b": "B", "tie": "tie"}.get(winner.lower())
            if norm is None:
                raise ValueError(f"winner {winner!r} is not A, B or tie")
            return norm, str(obj.get("reason", ""))
        start = text.find("{", start + 1)
    raise ValueError(f"no JSON object with a 'winner' field in the answer: {(text or '')[:200]!r}")


def letter_content(resp):
    """The letter mode's answer as JSON text: the reply and, where the server sent them, the
    log-probs of "A" and "B" among the first token's top log-probs."""
    choice = resp.choices[0]
    found = {}
    tokens = getattr(getattr(choice, "logprobs", None), "content", None) or []
    for t in (tokens[0].top_logprobs or []) if tokens else []:
        letter = t.token.strip().upper()
        if letter in ("A", "B") and letter not in found:
            found[letter] = t.logprob
    if choice.message.content is None and not found:
        return None
    return json.dumps({"text": choice.message.content, "logprobs": found})


def parse_letter(content):
    """("A" | "B", how) from letter_content's JSON: the likelier letter by log-prob, else the
    first standalone A or B of the reply. ValueError if neither."""
    obj = json.loads(content)
    lp = obj.get("logprobs") or {}
    if lp:
        winner = max(lp, key=lp.get)
        return winner, "log-probs " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(lp.items()))
    m = LETTER_RE.search(obj.get("text") or "")
    if not m:
        raise ValueError(f"no A or B in the answer: {(obj.get('text') or '')[:100]!r}")
    return m.group(1), "reply text"


def combine(verdict_12, verdict_21):
    """Outcome for model 1 from the verdicts of both orders: "win" only if both prefer it,
    "loss" only if both prefer model 2, else "tie"."""
    pref_12 = {"A": 1, "B": 2, "tie": 0}[verdict_12]
    pref_21 = {"A": 2, "B": 1, "tie": 0}[verdict_21]
    if pref_12 == pref_21 == 1:
        return "win"
    if pref_12 == pref_21 == 2:
        return "loss"
    return "tie"


# ---------------------------------------------------------------- calls
def reply_text(resp):
    """The text of a chat-completion reply. A 200 reply that is not one (an HTML page, a JSON
    array, no choices, a choice without a message or without string content) is a ValueError
    that says what came instead: a failed call, never a crash of the run."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):
        raise ValueError(f"the server's reply is not a chat completion: {_preview(resp)}")
    if not choices:
        raise ValueError("response has no message content (no choices)")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        raise ValueError(f"response has no message content: first choice {_preview(choices[0])}")
    return content


def _preview(obj, n=120):
    text = obj if isinstance(obj, str) else repr(obj)
    return repr(" ".join(text.split())[:n])


class Judge:
    """One judge model behind an OpenAI-compatible endpoint, with a disk cache and retries."""

    def __init__(self, base_url, model, api_key, cache_dir, timeout=60.0, retries=3,
                 backoff=1.0, max_tokens=256, temperature=0.0, max_consecutive_failures=10, mode="json"):
        if mode not in MODES:
            raise JudgeError(f"unknown judge mode {mode!r}; choose from {list(MODES)}")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.model, self.cache_dir, self._key, self.mode = model, Path(cache_dir), api_key, mode
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        if mode == "letter":
            self.params.update(max_tokens=min(max_tokens, 4), logprobs=True, top_logprobs=5)
        self.parse = parse_letter if mode == "letter" else parse_verdict
        self.retries, self.backoff = retries, backoff
        self.max_consecutive_failures = max_consecutive_failures
        self._failures, self._lock, self.gave_up = 0, threading.Lock(), threading.Event()

    def cache_path(self, messages):
        blob = json.dumps({"model": self.model, "messages": messages, "params": self.params},
                          sort_keys=True, ensure_ascii=False)
        key = hashlib.sha256(blob.encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def ask(self, messages):
        """{"winner", "reason", "content", "error", "cached", "attempts", "cache_key"}; never
        raises for a failed call. Only answers that parse are cached."""
        path = self.cache_path(messages)
        rec = {"cache_key": path.stem, "cached": False, "attempts": 0, "content": None,
               "winner": None, "reason": None, "error": None}
        try:
            content = json.loads(path.read_text(encoding="utf-8"))["content"]
            rec.update(zip(("winner", "reason"), self.parse(content)), content=content, cached=True)
            return rec
        except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
            pass
        if self.gave_up.is_set():
            rec["error"] = f"skipped: {self.max_consecutive_failures} calls in a row failed"
            return rec
        for attempt in range(self.retries + 1):
            rec["attempts"] = attempt + 1
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages, **self.params)
                rec["content"] = reply_text(resp)  # a reply that is not a chat completion raises here
                if self.mode == "letter":
                    rec["content"] = letter_content(resp)
                rec["error"] = None
                break
            except (openai.APIError, ValueError) as e:
                rec["error"] = self._describe(e)
                status = getattr(e, "status_code", None)
                retryable = isinstance(e, openai.APIConnectionError) or (
                    status is not None and (status >= 500 or status in RETRY_STATUS))
                if not retryable or attempt == self.retries:
                    break
                time.sleep(self.backoff * 2 ** attempt * (1 + 0.25 * random.random()))
        with self._lock:
            self._failures = 0 if rec["content"] is not None else self._failures + 1
            if self.max_consecutive_failures and self._failures >= self.max_consecutive_failures:
                self.gave_up.set()
        if rec["content"] is not None:
            try:
                rec["winner"], rec["reason"] = self.parse(rec["content"])
            except ValueError as e:
                rec["error"] = f"bad answer: {e}"
                return rec
            write_json(path, {"model": self.model, "params": self.params,
                              "messages": messages, "content": rec["content"]})
        return rec

    def _describe(self, e):
        """A one-line error with the API key scrubbed, should a server echo it back."""
        status = getattr(e, "status_code", None)
        msg = f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {e}"
        msg = msg.replace(self._key, "***") if self._key else msg
        return " ".join(msg.split())[:300]


# ---------------------------------------------------------------- the batch
def run(items, judge, concurrency=4, name_1="model_1", name_2="model_2"):
    """Judge every (question, draft_1, draft_2) in both orders. Returns (per_question, calls)."""
    tasks = []
    for i, (question, d1, d2) in enumerate(items):
        for order in ORDERS:
            a, b = (d1, d2) if order == "12" else (d2, d1)
            tasks.append((i, order, judge_messages(question, a, b, letter=judge.mode == "letter")))
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(tasks), desc=f"judge {name_1} vs {name_2}", unit="call") as bar:
        def one(task):
            try:
                rec = judge.ask(task[2])
            except Exception as e:  # never lose the other calls' results to one surprise
                rec = {"cache_key": None, "cached": False, "attempts": 1, "content": None,
                       "winner": None, "reason": None, "error": f"internal error: {judge._describe(e)}"}
            bar.update()
            return rec
        records = list(pool.map(one, tasks))
    calls, verdicts = [], {}
    for (i, order, _), rec in zip(tasks, records):
        call = {"question": items[i][0], "order": order,
                "A": name_1 if order == "12" else name_2, "B": name_2 if order == "12" else name_1, **rec}
        verdicts[i, order] = call
        calls.append(call)
    per_question = []
    for i, (question, _, _) in enumerate(items):
        c12, c21 = verdicts[i, "12"], verdicts[i, "21"]
        errors = {o: c["error"] for o, c in (("12", c12), ("21", c21)) if c["error"]}
        outcome = "failed" if errors else combine(c12["winner"], c21["winner"])
        per_question.append({"question": question, "outcome": outcome,
                             "verdict_12": c12["winner"], "verdict_21": c21["winner"],
                             "reason_12": c12["reason"], "reason_21": c21["reason"], "errors": errors})
    return per_question, calls


def summarize(per_question, seed=stats.SEED):
    outcomes = [p["outcome"] for p in per_question if p["outcome"] != "failed"]
    out = {"n": len(outcomes), "failed": len(per_question) - len(outcomes)}
    if outcomes:
        r = stats.win_rate(outcomes, seed=seed)
        out.update({k: r[k] for k in ("wins", "ties", "losses", "win_rate", "ci_low", "ci_high")})
    else:
        out.update(wins=0, ties=0, losses=0, win_rate=None, ci_low=None, ci_high=None)
    firsts = [p[f"verdict_{o}"] for p in per_question for o in ORDERS if p[f"verdict_{o}"]]
    out["first_position_share"] = (sum(v == "A" for v in firsts) / len(firsts)) if firsts else None
    return out


def judge_files(drafts_1, drafts_2, out, judge, name_1, name_2, base_url, calls_out=None,
                limit=None, concurrency=4):
    """The whole `askdraft judge` stage; writes the results JSON and the per-call JSONL."""
    items = match_drafts(drafts_1, drafts_2, limit)
    per_question, calls = run(items, judge, concurrency, name_1, name_2)
    results = {"judge_model": judge.model, "base_url": base_url, "mode": judge.mode,
               "note": ("a small local judge's letter verdicts: a pipeline check, not a measurement of "
                        "question quality") if judge.mode == "letter" else None,
               "name_a": name_1, "name_b": name_2,
               "drafts_a": str(drafts_1), "drafts_b": str(drafts_2),
               "drafts_a_sha256": sha256_file(drafts_1), "drafts_b_sha256": sha256_file(drafts_2),
               "params": judge.params, "questions": len(items), **summarize(per_question)}
    results["complete"] = results["failed"] == 0
    results["per_question"] = per_question
    out = Path(out)
    write_jsonl(calls_out or out.with_suffix(".calls.jsonl"), calls)
    write_json(out, results)
    return results


# ---------------------------------------------------------------- CLI
def add_cli(sub):
    p = sub.add_parser("judge", help="pairwise LLM judge of two models' clarifying questions")
    p.add_argument("--drafts-a", required=True, type=Path, help="drafts JSONL of model 1 (e.g. DPO)")
    p.add_argument("--drafts-b", required=True, type=Path, help="drafts JSONL of model 2 (e.g. phase B)")
    p.add_argument("--name-a", help="model 1's name (default: the drafts file's folder name)")
    p.add_argument("--name-b", help="model 2's name (default: the drafts file's folder name)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                   "(default: OpenAI, or $OPENAI_BASE_URL)")
    p.add_argument("--model", help="judge model name as the server knows it (default with --serve: "
                   "the served directory)")
    p.add_argument("--serve", type=Path, metavar="MODEL_DIR", help="run `transformers serve MODEL_DIR` "
                   "on localhost for this run and judge with it (instead of --base-url)")
    p.add_argument("--api-key-env", help="environment variable holding the API key "
                   "(default OPENAI_API_KEY; unset is fine for a --base-url server that needs none)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/judge"))
    p.add_argument("--out", type=Path, help="results JSON (default results/judge_<a>_vs_<b>.json)")
    p.add_argument("--calls-out", type=Path, help="per-call JSONL (default: beside --out, .calls.jsonl)")
    p.add_argument("--limit", type=positive_int, help="judge only the first N questions")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument("--retries", type=int, default=3, help="retries per call, exponential back-off")
    p.add_argument("--backoff", type=float, default=1.0, help="first back-off in seconds")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--mode", choices=MODES, default="json",
                   help="json: a JSON verdict with a reason; letter: one letter A/B (small local judges)")
    p.add_argument("--max-consecutive-failures", type=int, default=10,
                   help="stop calling after this many failed calls in a row (0: never)")
    p.set_defaults(func=cmd)


def cmd(args):
    """Returns 0 if every question was judged, 1 if some failed (results still written)."""
    name_1 = args.name_a or args.drafts_a.resolve().parent.name
    name_2 = args.name_b or args.drafts_b.resolve().parent.name
    if name_1 == name_2:
        name_1, name_2 = f"{name_1}_a", f"{name_2}_b"
    if args.serve and args.base_url:
        print("error: give --serve or --base-url, not both", file=sys.stderr)
        return 2
    model = args.model or (str(args.serve) if args.serve else None)
    if model is None:
        print("error: --model is required (unless --serve names the model)", file=sys.stderr)
        return 2
    out = args.out or Path("results") / f"judge_{name_1}_vs_{name_2}.json"
    try:
        with (served(args.serve, out.with_suffix(".serve.log")) if args.serve
              else contextlib.nullcontext(args.base_url)) as base_url:
            key = api_key(args.api_key_env, base_url)
            judge = Judge(base_url, model, key, args.cache_dir, args.timeout, args.retries,
                          args.backoff, args.max_tokens, args.temperature, args.max_consecutive_failures,
                          args.mode)
            r = judge_files(args.drafts_a, args.drafts_b, out, judge, name_1, name_2, base_url,
                            args.calls_out, args.limit, args.concurrency)
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = "n/a" if r["win_rate"] is None else f"{r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    print(f"{name_1} vs {name_2}: {r['wins']} wins, {r['ties']} ties, {r['losses']} losses, "
          f"{r['failed']} failed; win-rate {rate} -> {out}")
    for p in [p for p in r["per_question"] if p["outcome"] == "failed"][:10]:
        for order, err in p["errors"].items():
            print(f"failed: order {order} of {p['question']!r}: {err}", file=sys.stderr)
    if r["failed"]:
        print(f"{r['failed']} question(s) failed; re-run the same command to retry them", file=sys.stderr)
    return 1 if r["failed"] else 0
