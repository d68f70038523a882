"""The OpenAI-compatible judge against small fake servers on 127.0.0.1: request shape, retries,
a total deadline per request, failing fast, the cache (keyed by endpoint), the API key kept out of
every file, adapting to current models, configurable prompts, and the `eval` command's options.
(The judge against a real vLLM server: tests/optional/test_vllm_judge.py, `make test-vllm`.)"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import write_jsonl

from seq2seq_rm.cli import main
from seq2seq_rm.errors import ConfigError, Seq2SeqRMError
from seq2seq_rm.eval import judges as judges_mod
from seq2seq_rm.eval.compare import evaluate_files
from seq2seq_rm.eval.judges import HFJudge, OpenAIJudge, parse_verdict
from seq2seq_rm.eval.winrate import pairwise_winrate

SECRET = "sk-test-SECRET-0123456789abcdef"
CUT_OFF = "You are correct in your assessment. The"  # SmolLM2-135M-Instruct's reply at max_tokens=8

MAX_TOKENS_REFUSED = {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
               "instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}
TEMPERATURE_REFUSED = {"error": {
    "message": "Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) value is "
               "supported.", "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}
UNKNOWN_MODEL = {  # what three servers answer for a model they do not serve
    "vllm": (404, {"error": {"message": "The model `no-such-model` does not exist.", "type": "NotFoundError",
                             "param": "model", "code": 404}}),
    "openai": (404, {"error": {"message": "The model `no-such-model` does not exist or you do not have access to it.",
                               "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
    "ollama": (404, {"error": {"message": 'model "no-such-model" not found, try pulling it first',
                               "type": "api_error", "param": None, "code": None}}),
}


# --------------------------------------------------------------------------------------------- fake server


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 serving ``models`` under ``/v1``.

    ``script`` lists what the next chat requests get, then ``default`` applies: None (a normal
    reply: the response containing "good" wins, "B"-side wins when ``invert``), "500", "429",
    "400", "401", "403" (an error that quotes the Authorization header), "sleep" (1 s, then a
    normal reply), "garbage" (prose without a verdict), "length" (a reply cut at its limit),
    "echo-key" (a readable verdict that quotes the Authorization header), "trickle-head" /
    "trickle-body" (one byte every 0.1 s, in the headers or in the body). ``reject_max_tokens`` /
    ``reject_temperature`` answer 400 like OpenAI's reasoning models; ``delay`` holds every normal
    reply; ``in_flight_max`` is the most requests handled at once."""

    def __init__(self, models=("judge-model", "other-model")):
        self.requests: list[dict] = []
        self.script: list = []
        self.default = None
        self.models = list(models)
        self.invert = False
        self.reject_max_tokens = self.reject_temperature = False
        self.delay = 0.0
        self.answer = None  # fn(user message) -> reply text, instead of the default rule
        self.in_flight = self.in_flight_max = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if urllib.parse.urlsplit(self.path).path == "/v1/models":
                    return self._reply(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                                         for m in fake.models]})
                return self._reply(404, {"detail": "Not Found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if urllib.parse.urlsplit(self.path).path != "/v1/chat/completions":
                    return self._reply(404, {"detail": "Not Found"})
                body = json.loads(raw)
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = fake.script.pop(0) if fake.script else fake.default
                    fake.in_flight += 1
                    fake.in_flight_max = max(fake.in_flight_max, fake.in_flight)
                try:
                    self._handle(action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _handle(self, action, body):
                auth = self.headers.get("Authorization")
                if body["model"] not in fake.models:
                    return self._reply(*UNKNOWN_MODEL[fake.unknown_model_style])
                if fake.reject_max_tokens and "max_tokens" in body:
                    return self._reply(400, MAX_TOKENS_REFUSED)
                if fake.reject_temperature and "temperature" in body:
                    return self._reply(400, TEMPERATURE_REFUSED)
                if action == "sleep":
                    time.sleep(1.0)
                    action = None
                if action in ("500", "429", "400", "401", "403"):
                    return self._reply(int(action), {"error": {"message": f"Incorrect API key provided: {auth}"}})
                if action == "garbage":
                    return self._reply(200, fake.completion("Well, it depends on many things."))
                if action == "length":
                    return self._reply(200, fake.completion(CUT_OFF, finish="length"))
                if action == "echo-key":
                    return self._reply(200, fake.completion(f"Response A is better. (You sent: {auth})"))
                if action in ("trickle-head", "trickle-body"):
                    return self._trickle(action == "trickle-head")
                time.sleep(fake.delay)
                user = body["messages"][-1]["content"]
                if fake.answer is not None:
                    return self._reply(200, fake.completion(fake.answer(user)))
                first = user.split("[Response A]")[1].split("[Response B]")[0]
                return self._reply(200, fake.completion("**Response A**" if ("good" in first) != fake.invert else "B"))

            def _reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, in_head):
                data = json.dumps(fake.completion("A")).encode()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: {'x' * 100}\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n").encode()
                if in_head:  # the status line, then the rest of the headers and the body byte by byte
                    self.wfile.write(head[:17])
                    data = head[17:] + data
                else:
                    self.wfile.write(head)
                for i in range(len(data)):  # > 10 s in all
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
                self.close_connection = True

        self.unknown_model_style = "vllm"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def completion(text, finish="stop"):
        return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                "content": text}, "finish_reason": finish}]}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    srv = FakeOpenAI()
    yield srv
    srv.close()


def _api_judge(srv, cache, **kw):
    kw = {"api_key_env": "JUDGE_KEY", "timeout": 0.3, "max_retries": 3, "concurrency": 1, "cache_dir": cache,
          "backoff": 0.01, "seed": 0, **kw}
    return OpenAIJudge(kw.pop("model", "judge-model"), kw.pop("base_url", srv.url), **kw)


def rows(prompts, responses):
    return [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]


def _files(tmp_path, a, b, prompts=None):
    prompts = prompts or [f"question {i}" for i in range(len(a))]
    return write_jsonl(tmp_path / "a.jsonl", rows(prompts, a)), write_jsonl(tmp_path / "b.jsonl", rows(prompts, b))


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def _written(*dirs):
    return [p for d in dirs for p in d.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------------------------- requests


def test_openai_request_shape_and_retries_500_then_429(fake_api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake_api.script = ["500", "429"]
    out = _api_judge(fake_api, tmp_path / "cache").judge([("Q?", "a good answer", "meh")])
    assert out[0].winner == "A" and out[0].raw == "**Response A**"
    assert len(fake_api.requests) == 3
    req = fake_api.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = req["body"]
    # room for a chat model's sentence: 128 tokens by default (was 8, which cut replies off)
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 128
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "[Response A]\na good answer" in body["messages"][1]["content"]
    assert "HTTP 500" in caplog.text and "HTTP 429" in caplog.text and SECRET not in caplog.text


def test_openai_timeout_is_retried_and_4xx_is_not(fake_api, tmp_path):
    fake_api.script = ["sleep"]
    out = _api_judge(fake_api, tmp_path / "c1").judge([("Q?", "x", "good y")])
    assert out[0].winner == "B" and len(fake_api.requests) == 2
    fake_api.requests.clear()
    fake_api.script = ["400"]
    out = _api_judge(fake_api, tmp_path / "c2").judge([("Q?", "x", "y")])
    assert out[0].winner == "invalid" and "HTTP 400" in out[0].error and SECRET not in out[0].error
    assert len(fake_api.requests) == 1


def test_openai_retries_run_out_gives_invalid_not_cached(fake_api, tmp_path):
    fake_api.script = ["500"] * 3
    cache = tmp_path / "cache"
    out = _api_judge(fake_api, cache, max_retries=2).judge([("Q?", "x", "y")])
    assert out[0].winner == "invalid" and "gave up after 3 attempts" in out[0].error
    assert not list(cache.rglob("*.json"))


def test_openai_garbage_reply_is_invalid(fake_api, tmp_path):
    fake_api.script = ["garbage"]
    out = _api_judge(fake_api, tmp_path / "cache").judge([("Q?", "good", "bad")])
    assert out[0].winner == "invalid" and "could not read a verdict" in out[0].error
    assert out[0].raw == "Well, it depends on many things." and "finish_reason" not in out[0].error


def test_reply_cut_at_its_limit_says_so(fake_api, tmp_path):
    fake_api.script = ["length"]
    out = _api_judge(fake_api, tmp_path / "cache", max_tokens=8).judge([("Q?", "x", "y")])
    assert out[0].winner == "invalid" and out[0].raw == CUT_OFF
    assert "finish_reason 'length' at 8 tokens" in out[0].error and "raise --max-tokens" in out[0].error
    assert fake_api.requests[0]["body"]["max_tokens"] == 8


@pytest.mark.parametrize("where", ["trickle-head", "trickle-body"])
def test_deadline_bounds_a_trickling_server(fake_api, tmp_path, where):
    # One byte every 0.1 s: a per-read socket timeout of 1 s never fires, the total deadline does.
    fake_api.script = [where]
    judge = _api_judge(fake_api, tmp_path / "cache", timeout=1.0, max_retries=0)
    t0 = time.monotonic()
    out = judge.judge([("Q?", "x", "y")])
    elapsed = time.monotonic() - t0
    assert out[0].winner == "invalid" and "no complete reply within 1 s" in out[0].error
    assert 0.9 < elapsed < 1.8, elapsed


def test_both_orders_are_judged_concurrently(fake_api, tmp_path):
    judge = _api_judge(fake_api, tmp_path / "cache", concurrency=4, timeout=5)
    judge.judge([("warm-up", "x", "y")])  # the first request to a server goes alone
    fake_api.requests.clear()
    fake_api.in_flight_max, fake_api.delay = 0, 0.3
    a = rows(["p1", "p2"], ["good 1", "bad 2"])
    b = rows(["p1", "p2"], ["bad 1", "good 2"])
    r = pairwise_winrate(a, b, judge)
    assert (r.wins, r.losses, r.ties, r.invalid) == (1, 1, 0, 0)
    # 2 pairs x 2 orders in one call, all four in flight at once
    assert fake_api.in_flight_max == 4 and len(fake_api.requests) == 4 and judge.requests_sent == 1 + 4


# --------------------------------------------------------------------------------------------- fail fast


def test_connection_refused_fails_fast_after_the_first_requests_retries(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    judge = OpenAIJudge("m", url, api_key_env=None, cache_dir=tmp_path, max_retries=2, backoff=0.01,
                        concurrency=4, seed=0)
    t0 = time.monotonic()
    with pytest.raises(Seq2SeqRMError) as e:
        judge.judge([(f"q{i}", "x", "y") for i in range(5)])
    msg = str(e.value)
    assert f"cannot reach {url}: connection refused (after 3 attempt(s))" in msg and "Is the server running" in msg
    assert judge.requests_sent == 3  # the first request and its 2 retries; the 9 others never sent
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("code", ["401", "403"])
def test_auth_errors_stop_after_one_request(fake_api, tmp_path, code):
    fake_api.default = code
    fa, fb = _files(tmp_path, ["good"] * 5, ["bad"] * 5)
    with pytest.raises(Seq2SeqRMError) as e:
        evaluate_files(fa, fb, _api_judge(fake_api, tmp_path / "cache", concurrency=4), tmp_path / "out")
    assert f"HTTP {code}" in str(e.value) and SECRET not in str(e.value)
    assert ("$JUDGE_KEY" in str(e.value)) == (code == "401")
    assert len(fake_api.requests) == 1


@pytest.mark.parametrize("style", sorted(UNKNOWN_MODEL))
def test_unknown_model_fails_fast_and_lists_the_served_models(fake_api, tmp_path, style):
    fake_api.unknown_model_style = style
    judge = _api_judge(fake_api, tmp_path / "cache", model="no-such-model", concurrency=4)
    with pytest.raises(Seq2SeqRMError) as e:
        judge.judge([(f"q{i}", "x", "y") for i in range(4)])
    msg = str(e.value)
    assert f"the server at {fake_api.url} does not serve the model 'no-such-model'" in msg
    assert "It serves: judge-model, other-model" in msg
    assert len(fake_api.requests) == 1


def test_missing_v1_fails_fast_with_a_hint(fake_api, tmp_path):
    judge = _api_judge(fake_api, tmp_path / "cache", base_url=fake_api.root, concurrency=4)
    with pytest.raises(Seq2SeqRMError) as e:
        judge.judge([(f"q{i}", "x", "y") for i in range(4)])
    assert "HTTP 404 (not found)" in str(e.value)
    assert f"usually ends in /v1: try --base-url {fake_api.root}/v1" in str(e.value)
    assert judge.requests_sent == 1


@pytest.mark.parametrize("error, retries, requests", [("500", 1, 6), ("400", 3, 3)])
def test_failures_in_a_row_stop_the_run(fake_api, tmp_path, error, retries, requests):
    # 500: 3 items in a row exhaust their 2 attempts; 400 before any success: 3 requests.
    fake_api.default = error
    judge = _api_judge(fake_api, tmp_path / "cache", max_retries=retries)
    with pytest.raises(Seq2SeqRMError, match=f"stopped after 3 requests in a row failed; the last: .*HTTP {error}"):
        judge.judge([(f"q{i}", "x", "y") for i in range(6)])
    assert len(fake_api.requests) == requests


def test_item_errors_after_a_success_do_not_stop_the_run(fake_api, tmp_path):
    # A 400 for one item (e.g. a prompt too long for the model) once the server has answered.
    fake_api.script = [None, "400", "400", "400", "400", None]
    out = _api_judge(fake_api, tmp_path / "cache").judge(
        [(f"q{i}", "good", "bad") for i in range(6)])
    assert [j.winner for j in out] == ["A", "invalid", "invalid", "invalid", "invalid", "A"]


def test_eval_exits_non_zero_when_no_pair_could_be_judged(fake_api, tmp_path, capsys):
    fake_api.default = "garbage"
    fa, fb = _files(tmp_path, ["good", "good too"], ["bad", "bad"])
    rc = main(["eval", "--a", fa, "--b", fb, "--judge", "openai:judge-model", "--base-url", fake_api.url,
               "--api-key-env", "JUDGE_KEY", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "no pair could be judged: all 2 pairs have an invalid verdict" in err
    assert "the most common error (4 of 4 invalid verdicts): could not read a verdict" in err
    assert (tmp_path / "out" / "pairs.jsonl").is_file() and len(fake_api.requests) == 4


# --------------------------------------------------------------------------------------------- cache and key


def test_openai_eval_cache_and_key_never_written(fake_api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    prompts = [f"question {i}" for i in range(4)]
    fa = write_jsonl(tmp_path / "a.jsonl", rows(prompts, ["good one", "good two", "bad", "good four"]))
    fb = write_jsonl(tmp_path / "b.jsonl", rows(prompts, ["bad", "bad", "good three", "bad"]))
    cache, out = tmp_path / "cache", tmp_path / "out"
    fake_api.script = ["garbage", "500"]
    r, _ = evaluate_files(fa, fb, _api_judge(fake_api, cache, concurrency=3), out, names=("policy", "sft"))
    assert len(fake_api.requests) == 9  # 8 judgements + one retry
    assert r.invalid == 1 and r.wins + r.losses + r.ties == 3 and r.wins >= 2
    n_cached = len(list(cache.rglob("*.json")))
    assert n_cached == 8
    fake_api.requests.clear()
    judge2 = _api_judge(fake_api, cache, concurrency=3)
    r2, _ = evaluate_files(fa, fb, judge2, tmp_path / "out2", names=("policy", "sft"))
    assert fake_api.requests == [] and judge2.requests_sent == 0 and judge2.cache_hits == 8
    assert (r2.wins, r2.losses, r2.ties, r2.invalid) == (r.wins, r.losses, r.ties, r.invalid)
    written = _written(cache, out, tmp_path / "out2")
    assert len(written) >= 8 + 6
    for p in written:
        assert SECRET not in p.read_text(encoding="utf-8"), p
    assert SECRET not in caplog.text


def test_key_echoed_in_a_successful_reply_is_never_written(fake_api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake_api.default = "echo-key"
    fa, fb = _files(tmp_path, ["x"], ["y"])
    r, _ = evaluate_files(fa, fb, _api_judge(fake_api, tmp_path / "cache"), tmp_path / "out")
    assert r.records[0]["order_ab"] == {"winner": "A", "raw": "Response A is better. (You sent: Bearer ***)",
                                        "error": None}
    assert (r.ties, r.n) == (1, 1)
    written = _written(tmp_path / "cache", tmp_path / "out")
    assert len(written) == 2 + 4  # two cache entries; metrics, pairs, report, eval.json
    for p in written:
        text = p.read_text(encoding="utf-8")
        assert SECRET not in text, p
    assert "Bearer ***" in (tmp_path / "out" / "pairs.jsonl").read_text()
    assert SECRET not in caplog.text


def test_openai_missing_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(Seq2SeqRMError, match="NO_SUCH_JUDGE_KEY"):
        OpenAIJudge("m", "http://127.0.0.1:9/v1", api_key_env="NO_SUCH_JUDGE_KEY", cache_dir=tmp_path)


def test_openai_cache_key_ignores_the_api_key_and_includes_the_endpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("K1", "sk-one")
    monkeypatch.setenv("K2", "sk-two")
    j1 = OpenAIJudge("m", "http://127.0.0.1:9/v1", api_key_env="K1", cache_dir=tmp_path)
    j2 = OpenAIJudge("m", "http://127.0.0.1:9/v1/", api_key_env="K2", cache_dir=tmp_path)
    j3 = OpenAIJudge("m", "http://user:pw@127.0.0.1:9/v1", api_key_env=None, cache_dir=tmp_path)
    other = OpenAIJudge("m", "http://127.0.0.1:10/v1", api_key_env="K1", cache_dir=tmp_path)
    b1, b2 = j1.request_body("q", "x", "y"), j2.request_body("q", "x", "y")
    assert j1.cache_key(b1) == j2.cache_key(b2) == j3.cache_key(b1) != j1.cache_key(j1.request_body("q", "y", "x"))
    assert other.cache_key(b1) != j1.cache_key(b1)
    assert j3.endpoint == "http://127.0.0.1:9/v1" and "pw" not in repr(j3)
    assert judges_mod.default_cache_dir().name == "judge"


def test_a_verdict_cached_from_one_server_is_not_served_for_another(monkeypatch, tmp_path):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    s1, s2 = FakeOpenAI(), FakeOpenAI()
    s2.invert = True  # same model name, the opposite opinion
    try:
        cache = tmp_path / "cache"
        assert _api_judge(s1, cache).judge([("q", "good", "bad")])[0].winner == "A"
        j2 = _api_judge(s2, cache)
        assert j2.judge([("q", "good", "bad")])[0].winner == "B"
        assert len(s2.requests) == 1 and j2.cache_hits == 0  # asked of s2, not served from s1's cache
        entries = [json.loads(p.read_text()) for p in cache.rglob("*.json")]
        assert sorted(e["endpoint"] for e in entries) == sorted([s1.url, s2.url])
    finally:
        s1.close()
        s2.close()


def test_swapped_rerun_is_answered_from_the_cache(fake_api, tmp_path, capsys):
    fa, fb = _files(tmp_path, ["good 1", "good 2", "bad 3"], ["bad 1", "bad 2", "good 3"])
    base = ["--judge", "openai:judge-model", "--base-url", fake_api.url, "--api-key-env", "JUDGE_KEY",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(["eval", "--a", fa, "--b", fb, "--out", str(tmp_path / "ab"), *base]) == 0
    assert len(fake_api.requests) == 6
    assert main(["eval", "--a", fb, "--b", fa, "--out", str(tmp_path / "ba"), *base]) == 0
    assert len(fake_api.requests) == 6  # the same 6 requests, both orders: all from the cache
    ab = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    ba = json.loads((tmp_path / "ba" / "metrics.json").read_text())
    assert (ab["wins"], ab["losses"]) == (ba["losses"], ba["wins"]) == (2, 1)
    assert "0 requests sent, 6 verdicts from the cache" in capsys.readouterr().err


def test_proxy_from_the_environment_but_never_for_loopback(fake_api, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", fake_api.root)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    out = _api_judge(fake_api, tmp_path / "c1", base_url="http://judge.invalid/v1").judge(
        [("q", "good", "bad")])
    assert out[0].winner == "A" and fake_api.requests[0]["path"] == "http://judge.invalid:80/v1/chat/completions"
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_dead_port()}")  # a dead proxy: loopback goes direct
    out = _api_judge(fake_api, tmp_path / "c2").judge([("q", "good", "bad")])
    assert out[0].winner == "A" and fake_api.requests[1]["path"] == "/v1/chat/completions"


# --------------------------------------------------------------------------------------------- current models


def test_refused_max_tokens_and_temperature_are_adapted_once(fake_api, tmp_path):
    fake_api.reject_max_tokens = fake_api.reject_temperature = True
    items = [("q1", "good", "bad"), ("q2", "bad", "good")]
    judge = _api_judge(fake_api, tmp_path / "cache")
    assert [j.winner for j in judge.judge(items)] == ["A", "B"]
    bodies = [r["body"] for r in fake_api.requests]
    assert len(bodies) == 2 + 2  # two refusals, then the 2 requests
    assert bodies[0]["max_tokens"] == 128 and bodies[0]["temperature"] == 0
    assert "max_tokens" not in bodies[1] and bodies[1]["max_completion_tokens"] == 128 and "temperature" in bodies[1]
    for body in bodies[2:]:
        assert body["max_completion_tokens"] == 128 and "max_tokens" not in body and "temperature" not in body
    # The cache is keyed by the request as configured: a rerun needs no refusal to find it.
    again = _api_judge(fake_api, tmp_path / "cache")
    assert [j.winner for j in again.judge(items)] == ["A", "B"] and again.requests_sent == 0
    # Configured up front, the first request is accepted.
    fake_api.requests.clear()
    direct = _api_judge(fake_api, tmp_path / "c2", token_param="max_completion_tokens", temperature=None)
    assert [j.winner for j in direct.judge(items)] == ["A", "B"] and len(fake_api.requests) == 2


def test_explicit_max_tokens_is_not_switched(fake_api, tmp_path):
    fake_api.reject_max_tokens = True
    out = _api_judge(fake_api, tmp_path / "cache", token_param="max_tokens").judge(
        [("q", "x", "y")])
    assert out[0].winner == "invalid" and "HTTP 400: Unsupported parameter: 'max_tokens'" in out[0].error
    assert len(fake_api.requests) == 1


@pytest.mark.parametrize(
    "text, want",
    [
        ("the answer is indeed B", "B"), ("Response A is better", "A"), ("Response B is clearly better.", "B"),
        ("You are correct in your assessment. The correct answer is B.", "B"),
        ("You are correct in your assessment. Both response A and response B are indeed more helpful and correct, "
         "but the correct answer is indeed B.", "B"),
        ("I would choose Response A.", "A"), ("After comparing them, I prefer B because it is concise.", "B"),
        ("Response A is the better one here, since it answers the question.", "A"),
        (CUT_OFF, None), ("the answer is a good one", None),  # a lower-case "a" is the article
        ("Response A is better in tone, but Response B is better overall.", None),  # both claimed
        ("A better response would be B", None),
        ("Response A is more helpful and correct. In other words, Response B is a better choice.", None),
        ("Response B is a better answer.", "B"),
    ],
)
def test_parse_verdict_common_phrasings(text, want):
    assert parse_verdict(text) == want


# --------------------------------------------------------------------------------------------- prompts


TEMPLATE = "Q: {prompt}\nFirst: {response_a}\nSecond: {response_b}\nBetter, A or B? {{braces}} stay."


def test_eval_judge_and_system_prompt_files(fake_api, tmp_path):
    fake_api.answer = lambda user: "A" if "First: good" in user else "B"
    (tmp_path / "judge.txt").write_text(TEMPLATE, encoding="utf-8")
    (tmp_path / "system.txt").write_text("", encoding="utf-8")
    fa, fb = _files(tmp_path, ["good"], ["bad"], prompts=["q1"])
    rc = main(["eval", "--a", fa, "--b", fb, "--judge", "openai:judge-model", "--base-url", fake_api.url,
               "--api-key-env", "JUDGE_KEY", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
               "--judge-prompt", str(tmp_path / "judge.txt"), "--system-prompt", str(tmp_path / "system.txt"),
               "--max-tokens", "32", "--temperature", "none", "--token-param", "max_completion_tokens"])
    assert rc == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["wins"] == 1
    assert sorted(r["body"]["messages"][0]["content"] for r in fake_api.requests) == [
        "Q: q1\nFirst: bad\nSecond: good\nBetter, A or B? {braces} stay.",
        "Q: q1\nFirst: good\nSecond: bad\nBetter, A or B? {braces} stay.",
    ]
    body = fake_api.requests[0]["body"]
    assert len(body["messages"]) == 1 and body["max_completion_tokens"] == 32 and "temperature" not in body


def test_hf_judge_takes_the_prompt_template(tiny_model_dir):
    judge = HFJudge(tiny_model_dir, prompt_template=TEMPLATE)
    assert "First: x\nSecond: y\nBetter, A or B? {braces} stay." in judge.build_prompt("q", "x", "y")


@pytest.mark.parametrize(
    "template, message",
    [
        ("{prompt} {response_a}", "missing placeholder(s) {response_b}"),
        ("{prompt} {response_a} {response_b} {question}", "unknown placeholder(s) {question}"),
        ("{prompt} {response_a} {response_b} {}", "unknown placeholder(s) {}"),
        ("{prompt} {response_a} {response_b} }", "Single '}' encountered"),
    ],
)
def test_bad_judge_prompt_stops_at_start_up(fake_api, tmp_path, capsys, template, message):
    path = tmp_path / "judge.txt"
    path.write_text(template, encoding="utf-8")
    fa, fb = _files(tmp_path, ["x"], ["y"])
    rc = main(["eval", "--a", fa, "--b", fb, "--judge", "openai:judge-model", "--base-url", fake_api.url,
               "--api-key-env", "JUDGE_KEY", "--out", str(tmp_path / "out"), "--judge-prompt", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"--judge-prompt {path}: " in err and message in err
    assert fake_api.requests == [] and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="missing placeholder"):
        judges_mod.check_judge_prompt("{prompt}")


# --------------------------------------------------------------------------------------------- command


def test_eval_command_with_an_api_judge(fake_api, tmp_path, capsys):
    from seq2seq_rm.cli import COMMANDS, parse_args

    fa, fb = _files(tmp_path, ["good", "good too"], ["bad", "bad"], prompts=["q1", "q2"])
    a = parse_args(["eval", "--a", fa, "--b", fb, "--judge", "openai:judge-model", "--base-url", fake_api.url,
                    "--api-key-env", "JUDGE_KEY", "--out", str(tmp_path / "out"), "--names", "policy", "sft",
                    "--cache-dir", str(tmp_path / "cache"), "--timeout", "5", "--max-retries", "0",
                    "--concurrency", "2"])
    COMMANDS[a.key](a)
    printed = capsys.readouterr().out
    assert "| policy | sft | 2 | 2 | 0 | 0 | 0 | 100.0% |" in printed
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["judge"] == "openai:judge-model"
    assert len(fake_api.requests) == 4


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--timeout", "-1"], "timeout (--timeout) must be a number greater than 0, got -1.0"),
        (["--timeout", "0"], "timeout (--timeout) must be a number greater than 0, got 0.0"),
        (["--timeout", "nan"], "timeout (--timeout) must be a number greater than 0, got nan"),
        (["--concurrency", "0"], "concurrency (--concurrency) must be an integer at least 1, got 0"),
        (["--max-retries", "-1"], "max_retries (--max-retries) must be an integer at least 0, got -1"),
        (["--max-tokens", "0"], "max_tokens (--max-tokens) must be an integer at least 1, got 0"),
        (["--temperature", "hot"], "--temperature must be a number or 'none', got 'hot'"),
        (["--system-prompt", "/no/such/file"], "--system-prompt /no/such/file: cannot read it"),
        (["--base-url", "127.0.0.1:8000/v1"], "base URL must be http(s)://HOST[:PORT]/PATH"),
    ],
)
def test_bad_eval_options_stop_at_start_up(fake_api, tmp_path, capsys, flags, message):
    fa, fb = _files(tmp_path, ["x"], ["y"])
    argv = ["eval", "--a", fa, "--b", fb, "--judge", "openai:judge-model", "--api-key-env", "JUDGE_KEY",
            "--out", str(tmp_path / "out")]
    if "--base-url" not in flags:
        argv += ["--base-url", fake_api.url]
    assert main(argv + flags) == 2
    assert message in capsys.readouterr().err
    assert fake_api.requests == []


def test_api_options_are_refused_for_other_judges(tmp_path, capsys):
    fa, fb = _files(tmp_path, ["x"], ["y"])
    argv = ["eval", "--a", fa, "--b", fb, "--judge", "oracle:safety", "--out", str(tmp_path / "out")]
    assert main(argv + ["--timeout", "5"]) == 2
    assert main(argv + ["--judge-prompt", "p.txt"]) == 2
    err = capsys.readouterr().err
    assert "--timeout applies to openai:MODEL judges only" in err and "--judge-prompt applies to hf: and openai:" in err
