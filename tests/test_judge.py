"""askdraft judge against real OpenAI-compatible HTTP servers on localhost, no mocked client.

* `transformers serve` with a tiny Llama built here offline (a "bigram" model whose output
  depends only on the last prompt token, so it always answers {"winner": "A"}: a judge with
  pure position bias, which judging both orders must turn into ties).
* A small scriptable server (http.server, the real chat-completions wire format) whose
  verdicts follow markers in the drafts and which can fail, hang or talk nonsense on cue.
"""
import argparse
import json
import re
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from askdraft import judge, stats
from askdraft.io import InputError

SECRET = "sk-test-SECRET-never-on-disk-4242"


# ---------------------------------------------------------------- helpers
def write_drafts(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_drafts(tmp, questions):
    """Two drafts files; model 1's drafts carry the marker [m1], model 2's [m2]."""
    d1 = [{"question": q, "draft": f"[m1] What about {q}? Tentative answer: yes", "tentative": "yes"}
          for q in questions]
    d2 = [{"question": q, "draft": f"[m2] Is {q} true? Tentative answer: no", "tentative": "no"}
          for q in questions]
    return write_drafts(tmp / "dpo" / "dev.jsonl", d1), write_drafts(tmp / "phaseb" / "dev.jsonl", d2)


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    judge.add_cli(parser.add_subparsers())
    args = parser.parse_args(["judge", *map(str, argv)])
    return args.func(args)


def cli_args(tmp, a, b, url, model="scripted", **extra):
    argv = ["--drafts-a", a, "--drafts-b", b, "--base-url", url, "--model", model,
            "--cache-dir", tmp / "cache", "--out", tmp / "out" / "judge.json",
            "--retries", "1", "--backoff", "0.05", "--timeout", "10", "--concurrency", "3"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


def load_results(tmp):
    out = tmp / "out" / "judge.json"
    calls = [json.loads(line) for line in out.with_suffix(".calls.jsonl").read_text().splitlines()]
    return json.loads(out.read_text()), calls


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the scriptable server
class ScriptedJudge(ThreadingHTTPServer):
    """POST /v1/chat/completions. The question's id (Q0, Q1, ...) picks a behaviour from
    `script`: "m1"/"m2" prefer that model's draft wherever it is, "tie", "first" (always A),
    "garbage", "badwinner", "400", "500", "500once" (fails the first attempt of each order),
    "hang" (answers after 3 s), "echo-key" (a 500 whose body repeats the Authorization), and
    200 replies that are not chat completions: "html", "array", "nomessage", "nochoices"."""
    daemon_threads = True

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), Handler)
        self.script, self.requests, self.auth = dict(script), [], set()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a timed-out client hung up
            super().handle_error(request, client_address)

    def asked(self):
        with self.lock:
            return list(self.requests)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.send(404, {"error": {"message": "not found"}})
        user = body["messages"][-1]["content"]
        qid = re.search(r"\bQ\d+\b", user).group(0)
        i1, i2 = user.find("[m1]"), user.find("[m2]")  # -1: that draft is empty
        first = "m1" if i1 != -1 and (i2 == -1 or i1 < i2) else "m2"
        with srv.lock:
            srv.auth.add(self.headers.get("Authorization"))
            srv.requests.append((qid, "12" if first == "m1" else "21"))
            seen = srv.requests.count(srv.requests[-1])
        how = srv.script[qid]
        if how == "500" or (how == "500once" and seen == 1):
            return self.send(500, {"error": {"message": "boom", "type": "server_error"}})
        if how == "400":
            return self.send(400, {"error": {"message": "unsupported parameter", "type": "invalid_request"}})
        if how == "echo-key":
            return self.send(500, {"error": {"message": f"bad auth {self.headers['Authorization']}"}})
        if how == "hang":
            srv.stop.wait(3)
        if how == "html":  # a proxy's error page with status 200
            body = b"<html><body>Gateway says hello</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        if how == "array":
            return self.send(200, [{"winner": "A"}])
        if how in ("nomessage", "nochoices"):
            return self.send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop"}] if how == "nomessage" else []})
        content = {
            "m1": lambda: {"winner": "A" if first == "m1" else "B", "reason": "m1 asks better"},
            "m2": lambda: {"winner": "A" if first == "m2" else "B", "reason": "m2 asks better"},
            "tie": lambda: {"winner": "tie", "reason": "same"},
            "first": lambda: {"winner": "A", "reason": "A comes first"},
            "hang": lambda: {"winner": "tie", "reason": "slow"},
            "500once": lambda: {"winner": "A" if first == "m1" else "B", "reason": "m1 after retry"},
            "badwinner": lambda: {"winner": "C", "reason": "?"},
            "m1text": lambda: {"winner": "A" if first == "m1" else "B", "reason": "m1 asks better"},
        }.get(how)
        text = "Sure! ```json\n" + json.dumps(content()) + "\n```" if content else "I like the first one."
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        if "letter" in body["messages"][0]["content"] or "one letter" in body["messages"][0]["content"]:
            # the letter mode: one token; log-probs of both letters where asked for, except for "m1text"
            letter = content()["winner"] if content else None
            if how == "m1text":
                letter = "A" if first == "m1" else "B"
            choice["message"]["content"] = f"{letter}." if letter in ("A", "B") else text
            if body.get("logprobs") and letter in ("A", "B") and how != "m1text":
                other = "B" if letter == "A" else "A"
                top = [{"token": f" {letter}", "logprob": -0.2, "bytes": None},
                       {"token": other, "logprob": -1.9, "bytes": None}]
                choice["logprobs"] = {"content": [{"token": f" {letter}", "logprob": -0.2, "bytes": None,
                                                   "top_logprobs": top}]}
        self.send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                        "model": body["model"],
                        "choices": [choice],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


@pytest.fixture
def scripted():
    servers = []

    def start(script):
        srv = ScriptedJudge(script)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


EXPECTED = {"m1": "win", "m2": "loss", "tie": "tie", "first": "tie", "500once": "win", "hang": "tie"}


# ---------------------------------------------------------------- tests with the scripted server
def test_batch_outcomes_win_rate_and_cache(tmp_path, scripted):
    script = {"Q0": "m1", "Q1": "m1", "Q2": "m2", "Q3": "tie", "Q4": "first", "Q5": "m1", "Q6": "500once"}
    srv = scripted(script)
    questions = [f"Can Q{i} be answered by asking?" for i in range(len(script))]
    a, b = make_drafts(tmp_path, questions)
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 0
    res, calls = load_results(tmp_path)
    outcomes = [p["outcome"] for p in res["per_question"]]
    assert outcomes == [EXPECTED[script[f"Q{i}"]] for i in range(len(script))]
    assert [p["question"] for p in res["per_question"]] == questions
    # the win-rate two ways: from the counts, and from askdraft.stats over the outcomes
    n, w, t, l = res["n"], res["wins"], res["ties"], res["losses"]
    assert (n, res["failed"], w + t + l) == (len(script), 0, n)
    assert (w, t, l) == (outcomes.count("win"), outcomes.count("tie"), outcomes.count("loss"))
    assert res["win_rate"] == pytest.approx((w + t / 2) / n)
    ref = stats.win_rate(outcomes)
    assert (res["win_rate"], res["ci_low"], res["ci_high"]) == (ref["win_rate"], ref["ci_low"], ref["ci_high"])
    assert res["ci_low"] <= res["win_rate"] <= res["ci_high"]
    assert res["judge_model"] == "scripted" and res["base_url"] == srv.url and res["complete"]
    assert (res["name_a"], res["name_b"]) == ("dpo", "phaseb")
    # both orders were asked for every question; names follow the order
    expected_asks = [(q, o) for q in script for o in ("12", "21")] + [("Q6", "12"), ("Q6", "21")]
    assert sorted(srv.asked()) == sorted(expected_asks)              # Q6 retried once per order
    assert sorted((c["question"], c["order"]) for c in calls) == sorted((q, o) for q in questions for o in ("12", "21"))
    assert all((c["A"], c["B"]) == (("dpo", "phaseb") if c["order"] == "12" else ("phaseb", "dpo")) for c in calls)
    assert [c["attempts"] for c in calls if "Q6" in c["question"]] == [2, 2]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2 * len(script)
    # a second run is served from the cache: no request reaches the server, same results
    before = len(srv.asked())
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 0
    assert len(srv.asked()) == before
    res2, calls2 = load_results(tmp_path)
    assert res2 == res and all(c["cached"] for c in calls2)


def test_server_errors_are_recorded_and_only_they_are_retried(tmp_path, scripted):
    script = {"Q0": "m1", "Q1": "500", "Q2": "m2", "Q3": "500", "Q4": "tie"}
    srv = scripted(script)
    a, b = make_drafts(tmp_path, [f"Is Q{i} hard?" for i in range(5)])
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 1        # some failed: non-zero exit
    res, calls = load_results(tmp_path)
    assert [p["outcome"] for p in res["per_question"]] == ["win", "failed", "loss", "failed", "tie"]
    assert (res["n"], res["failed"], res["complete"]) == (3, 2, False)
    assert res["win_rate"] == pytest.approx((1 + 0.5) / 3)
    failed = [p for p in res["per_question"] if p["outcome"] == "failed"]
    assert all(set(p["errors"]) == {"12", "21"} and "HTTP 500" in p["errors"]["12"] for p in failed)
    assert sum(qid in ("Q1", "Q3") for qid, _ in srv.asked()) == 2 * 2 * 2   # 2 attempts each
    # the server recovers; a re-run asks only for the failed questions
    srv.script.update(Q1="m2", Q3="m1")
    before = len(srv.asked())
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 0
    assert sorted(srv.asked()[before:]) == [("Q1", "12"), ("Q1", "21"), ("Q3", "12"), ("Q3", "21")]
    res, _ = load_results(tmp_path)
    assert [p["outcome"] for p in res["per_question"]] == ["win", "loss", "loss", "win", "tie"]
    assert res["complete"]


def test_timeout_is_a_failed_question_not_a_crash(tmp_path, scripted):
    srv = scripted({"Q0": "m1", "Q1": "hang", "Q2": "m2"})
    a, b = make_drafts(tmp_path, [f"Q{i} is slow?" for i in range(3)])
    start = time.monotonic()
    rc = run_cli(*cli_args(tmp_path, a, b, srv.url, timeout=0.5, retries=0))
    assert rc == 1 and time.monotonic() - start < 2.9
    res, calls = load_results(tmp_path)
    assert [p["outcome"] for p in res["per_question"]] == ["win", "failed", "loss"]
    assert "Timeout" in res["per_question"][1]["errors"]["12"]
    assert not any("Q1" in c["question"] and c["cached"] for c in calls)


def test_bad_answers_and_client_errors_fail_with_a_reason(tmp_path, scripted):
    srv = scripted({"Q0": "garbage", "Q1": "badwinner", "Q2": "m1", "Q3": "400"})
    a, b = make_drafts(tmp_path, [f"Q{i}?" for i in range(4)])
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 1
    res, calls = load_results(tmp_path)
    p0, p1, p2, p3 = res["per_question"]
    assert p0["outcome"] == p1["outcome"] == "failed" and p2["outcome"] == "win"
    assert "no JSON object" in p0["errors"]["12"] and "I like the first one" in p0["errors"]["12"]
    assert "'C' is not A, B or tie" in p1["errors"]["21"]
    assert "HTTP 400" in p3["errors"]["12"] and p3["outcome"] == "failed"
    assert len(srv.asked()) == 8                  # neither a bad answer nor a 400 is retried
    assert sorted(c["question"] for c in calls if c["cached"] is False and c["error"] is None) == ["Q2?"] * 2
    # bad answers are not cached: a re-run asks again for them, but not for Q2
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 1
    assert sorted({qid for qid, _ in srv.asked()[8:]}) == ["Q0", "Q1", "Q3"] and len(srv.asked()) == 14


def test_replies_that_are_not_chat_completions_fail_only_their_question(tmp_path, scripted):
    srv = scripted({"Q0": "html", "Q1": "array", "Q2": "nomessage", "Q3": "nochoices", "Q4": "m1"})
    a, b = make_drafts(tmp_path, [f"Q{i}?" for i in range(5)])
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 1  # results written, exit 1
    res, calls = load_results(tmp_path)
    outcomes = [p["outcome"] for p in res["per_question"]]
    assert outcomes == ["failed"] * 4 + ["win"] and res["failed"] == 4 and res["n"] == 1
    errors = [p["errors"]["12"] for p in res["per_question"][:4]]
    assert "not a chat completion" in errors[0] and "Gateway says hello" in errors[0]
    assert "not a chat completion" in errors[1]
    assert "no message content" in errors[2] and "no message content" in errors[3]
    assert len(srv.asked()) == 10  # not retried


def test_an_empty_draft_is_judged_not_refused(tmp_path, scripted):
    srv = scripted({"Q0": "tie", "Q1": "m1"})
    a, b = make_drafts(tmp_path, ["Q0?", "Q1?"])
    rows = [json.loads(x) for x in a.read_text().splitlines()]
    rows[0]["draft"] = ""  # a real outcome of `askdraft drafts`
    write_drafts(a, rows)
    assert judge.match_drafts(a, b)[0] == ("Q0?", "", judge.load_drafts(b)["Q0?"]["draft"])
    assert run_cli(*cli_args(tmp_path, a, b, srv.url)) == 0
    res, _ = load_results(tmp_path)
    assert [p["outcome"] for p in res["per_question"]] == ["tie", "win"]
    assert sorted(q for q, _ in srv.asked()) == ["Q0", "Q0", "Q1", "Q1"]  # the empty draft was judged


def test_api_key_only_from_env_and_never_written(tmp_path, scripted, monkeypatch):
    srv = scripted({"Q0": "m1", "Q1": "echo-key"})
    a, b = make_drafts(tmp_path, ["Q0 ok?", "Q1 ok?"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # an explicitly named variable that is unset is an error before any call
    assert run_cli(*cli_args(tmp_path, a, b, srv.url, api_key_env="JUDGE_KEY_FOR_TEST")) == 2
    assert srv.asked() == []
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", SECRET)
    assert run_cli(*cli_args(tmp_path, a, b, srv.url, api_key_env="JUDGE_KEY_FOR_TEST")) == 1
    assert srv.auth == {f"Bearer {SECRET}"}
    res, _ = load_results(tmp_path)
    assert "***" in res["per_question"][1]["errors"]["12"]         # the echoed key was scrubbed
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) > 4 and not any(SECRET in f.read_text(errors="replace") for f in files)
    # no key at all is fine for a custom server: a placeholder is sent
    srv.auth.clear()
    run_cli(*cli_args(tmp_path, a, b, srv.url))
    assert srv.auth == {f"Bearer {judge.PLACEHOLDER_KEY}"}


def test_unreachable_server_gives_up_and_writes_results(tmp_path):
    a, b = make_drafts(tmp_path, [f"Q{i}?" for i in range(6)])
    url = f"http://127.0.0.1:{free_port()}/v1"
    rc = run_cli(*cli_args(tmp_path, a, b, url, retries=0, concurrency=1, max_consecutive_failures=3))
    res, calls = load_results(tmp_path)
    assert rc == 1 and res["failed"] == 6 and res["win_rate"] is None
    assert sum("Connection" in c["error"] for c in calls) == 3
    assert sum(c["error"].startswith("skipped") for c in calls) == 9


def test_bad_input_names_file_and_line(tmp_path):
    good = {"question": "Q0?", "draft": "d"}
    a = write_drafts(tmp_path / "a.jsonl", [good, {"question": "Q1?", "draft": "d"}])
    b = write_drafts(tmp_path / "b.jsonl", [good])
    with pytest.raises(InputError, match=r"a\.jsonl:2: question not in .*b\.jsonl"):
        judge.match_drafts(a, b)
    with pytest.raises(InputError, match=r"a\.jsonl:2: question not in .*b\.jsonl"):
        judge.match_drafts(b, a)
    assert judge.match_drafts(a, a, limit=1) == [("Q0?", "d", "d")]
    bad = {"empty question": '{"question": " ", "draft": "d"}\n', "malformed": '{"question": \n',
           "duplicate": '{"question": "Q0?", "draft": "other"}\n', "not a string": '{"question": "Q9?", "draft": 3}\n',
           "not UTF-8": b'{"question": "Q9?", "draft": "\xff"}\n'}
    for what, line in bad.items():
        f = tmp_path / "bad.jsonl"
        f.write_bytes((json.dumps(good) + "\n").encode() + (line if isinstance(line, bytes) else line.encode()))
        with pytest.raises(InputError, match=r"bad\.jsonl:2: "):
            judge.match_drafts(f, b)


@pytest.mark.parametrize("text,verdict", [
    ('{"winner": "A", "reason": "x"}', "A"), ('```json\n{"winner":"b"}\n```', "B"),
    ('Verdict {not json} then {"winner": "Tie", "reason": "same"}', "tie")])
def test_parse_verdict(text, verdict):
    assert judge.parse_verdict(text)[0] == verdict


def test_combine_both_orders():
    # verdict_12 has model 1 as A, verdict_21 has model 1 as B
    assert judge.combine("A", "B") == "win" and judge.combine("B", "A") == "loss"
    assert {judge.combine(x, y) for x, y in [("A", "A"), ("B", "B"), ("tie", "tie"),
                                               ("A", "tie"), ("tie", "A")]} == {"tie"}


# ---------------------------------------------------------------- transformers serve
ANSWER = '{"winner":"A","reason":"first-is-best"}'


def build_bigram_llama(path):
    """A Llama whose blocks add nothing (o_proj, down_proj = 0), so the next token depends
    only on the last one: "assistant" -> ANSWER -> <|im_end|>. Tokenizer: word level, ChatML."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", ANSWER]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }}\n{{ m['content'] }} <|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant\n{% endif %}")
    fast.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    nxt = {i: 2 for i in range(len(vocab))} | {vocab.index("assistant"): vocab.index(ANSWER)}
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), 16))
        model.lm_head.weight.zero_()
        for cur, new in nxt.items():
            model.lm_head.weight[new, cur] = 10.0
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "bigram-llama"
    build_bigram_llama(model_dir)
    with judge.served(model_dir, root / "serve.log", startup_timeout=120) as url:  # the code under test
        yield url, str(model_dir), root / "serve.log"


def test_transformers_serve_position_biased_judge_ties(tmp_path, transformers_serve):
    url, model, log = transformers_serve
    questions = [f"Would Q{i} need sub-questions?" for i in range(4)]
    a, b = make_drafts(tmp_path, questions)

    def served():
        return log.read_text().count("POST /v1/chat/completions")
    argv = cli_args(tmp_path, a, b, url, model=model, timeout=60)
    assert run_cli(*argv) == 0
    res, calls = load_results(tmp_path)
    assert served() == 2 * len(questions)
    assert all(c["content"] == ANSWER and c["winner"] == "A" for c in calls)
    # always "A" prefers model 1 in one order and model 2 in the other: every question ties
    assert [p["outcome"] for p in res["per_question"]] == ["tie"] * len(questions)
    assert res["win_rate"] == 0.5 and res["first_position_share"] == 1.0
    assert run_cli(*argv) == 0
    assert served() == 2 * len(questions)                          # the cache answered
    assert load_results(tmp_path)[0] == res


def test_serve_option_runs_transformers_serve_for_the_run_only(tmp_path):
    pytest.importorskip("fastapi")
    model_dir = tmp_path / "bigram-llama"
    build_bigram_llama(model_dir)
    questions = [f"Would Q{i} need sub-questions?" for i in range(2)]
    a, b = make_drafts(tmp_path, questions)
    argv = [a if x == "URL" else x for x in cli_args(tmp_path, a, b, "URL")]
    argv = argv[:argv.index("--base-url")] + argv[argv.index("--base-url") + 2:]  # no --base-url
    argv = [x for i, x in enumerate(argv) if x != "--model" and (i == 0 or argv[i - 1] != "--model")]
    assert run_cli(*argv, "--serve", model_dir) == 0
    res, calls = load_results(tmp_path)
    assert res["judge_model"] == str(model_dir) and res["questions"] == 2
    assert all(c["content"] == ANSWER for c in calls) and res["win_rate"] == 0.5
    log = (tmp_path / "out" / "judge.serve.log").read_text()
    assert log.count("POST /v1/chat/completions") == 4
    port = int(re.search(r"127\.0\.0\.1:(\d+)", res["base_url"]).group(1))
    with pytest.raises(OSError):  # the server is gone when the command returns
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    with pytest.raises(InputError, match="no config.json"):
        run_cli(*argv, "--serve", tmp_path / "nowhere")


# ---------------------------------------------------------------- the letter (constrained) mode
def test_letter_mode_takes_logprobs_or_the_reply_letter(tmp_path, scripted):
    script = {"Q0": "m1", "Q1": "m2", "Q2": "first", "Q3": "m1text", "Q4": "garbage"}
    srv = scripted(script)
    questions = [f"Can Q{i} be answered by asking?" for i in range(len(script))]
    a, b = make_drafts(tmp_path, questions)
    assert run_cli(*cli_args(tmp_path, a, b, srv.url, mode="letter")) == 1  # Q4 has no letter
    res, calls = load_results(tmp_path)
    assert [p["outcome"] for p in res["per_question"]] == ["win", "loss", "tie", "win", "failed"]
    assert res["mode"] == "letter" and "pipeline check" in res["note"]
    by_q = {(c["question"][:6], c["order"]): c for c in calls}
    assert by_q["Can Q0", "12"]["reason"] == "log-probs A -0.200, B -1.900"
    assert by_q["Can Q3", "12"]["reason"] == "reply text" and by_q["Can Q3", "21"]["winner"] == "B"
    assert "no A or B in the answer" in by_q["Can Q4", "12"]["error"]
    assert res["n"] == 4 and res["win_rate"] == pytest.approx((2 + 0.5) / 4)


def test_letter_mode_against_transformers_serve(tmp_path, transformers_serve):
    """transformers serve ignores logprobs (it warns and answers); the letter comes from the reply."""
    url, model, log = transformers_serve
    questions = [f"Would L{i} need sub-questions?" for i in range(3)]
    a, b = make_drafts(tmp_path, questions)
    assert run_cli(*cli_args(tmp_path, a, b, url, model=model, timeout=60, mode="letter")) == 0
    res, calls = load_results(tmp_path)
    assert all(c["winner"] == "A" and c["reason"] == "reply text" for c in calls)
    assert [p["outcome"] for p in res["per_question"]] == ["tie"] * 3 and res["mode"] == "letter"
