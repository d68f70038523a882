"""The reward server (seq2seq_rm/serve): the batcher on its own, then the server started for real
on 127.0.0.1 (uvicorn in a thread, a free port) and checked against independent computations:
``rm score``'s own function for token rewards, ``RewardModel.token_rewards`` one row at a time
for the load test and the OpenRLHF endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import socket
import threading
import time
import types

import pytest
import torch
from helpers import write_jsonl

from seq2seq_rm.cli import main, parse_args, serve_config
from seq2seq_rm.config import ExtractionConfig
from seq2seq_rm.data.templates import encode_response
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rewards import load_reward_model
from seq2seq_rm.rewards.seq2seq import Seq2SeqRewardModel
from seq2seq_rm.rewards.views import score_file
from seq2seq_rm.serve.app import Row, ServerThread, create_app, read_api_key, run_server, score_rows
from seq2seq_rm.serve.batching import BatchLimits, DynamicBatcher, QueueFull
from seq2seq_rm.serve.config import ServeConfig

ATOL = 1e-5  # float32: a different batch (padding width) changes results only by rounding
CHAT_PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]


# ------------------------------------------------------------------------------------ the batcher


def _run(coro):
    return asyncio.run(coro)


def test_batcher_groups_rows_within_the_limits_and_keeps_order():
    batches = []

    def forward(payloads):
        batches.append(list(payloads))
        time.sleep(0.02)  # while this runs, more items queue up
        return [p * 10 for p in payloads]

    async def go():
        b = DynamicBatcher(forward, BatchLimits(max_batch_size=4, max_batch_tokens=100, max_wait_ms=2))
        await b.start()
        tokens = {i: 10 + (i % 5) * 10 for i in range(40)}  # 10..50 tokens
        results = await asyncio.gather(*(b.run([i], [tokens[i]]) for i in range(40)))
        await b.stop()
        return b, tokens, results

    b, tokens, results = _run(go())
    assert results == [[i * 10] for i in range(40)]  # every result to its own caller
    assert sorted(p for batch in batches for p in batch) == list(range(40))  # each item computed once
    assert [p for batch in batches for p in batch] == list(range(40))  # in arrival order
    for batch in batches:
        assert len(batch) <= 4 and len(batch) * max(tokens[p] for p in batch) <= 100
    assert b.stats.forward_passes == len(batches) < 40 and b.stats.largest_batch > 1
    assert b.stats.computed == b.stats.submitted == 40


def test_batcher_skips_cancelled_items_isolates_failures_and_bounds_the_queue():
    calls = []
    gate = threading.Event()

    def forward(payloads):
        calls.append(list(payloads))
        if payloads == ["slow"]:
            gate.wait(5)
        if "bad" in payloads:
            raise ValueError("bad row")
        return [p.upper() for p in payloads]

    async def go():
        b = DynamicBatcher(forward, BatchLimits(max_batch_size=8, max_batch_tokens=1000, max_wait_ms=0, max_queue=3))
        await b.start()
        slow = asyncio.ensure_future(b.run(["slow"], [1]))
        while not calls:  # the worker is busy with "slow"
            await asyncio.sleep(0.005)
        gone = b.submit(["gone"], [1])[0]
        gone.cancel()  # its client went away while it waited
        bad = asyncio.ensure_future(b.run(["bad"], [1]))
        good = asyncio.ensure_future(b.run(["good"], [1]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):  # 3 queued already
            b.submit(["x", "y"], [1, 1])
        gate.set()
        out = await asyncio.gather(slow, bad, good, return_exceptions=True)
        await b.stop()
        return b, out

    b, (slow, bad, good) = _run(go())
    assert slow == ["SLOW"] and good == ["GOOD"] and isinstance(bad, ValueError)
    assert "gone" not in [p for c in calls for p in c]  # nothing computed for a request that had gone
    assert calls[1:] == [["bad", "good"], ["bad"], ["good"]]  # the failed batch, then each row alone
    assert b.stats.cancelled == 1 and b.stats.failed == 1 and b.stats.refused == 2 and b.stats.failed_passes == 2


def test_batcher_waits_at_most_max_wait_for_a_batch_to_fill():
    seen = []

    async def go():
        b = DynamicBatcher(lambda ps: seen.append(len(ps)) or ps, BatchLimits(max_batch_size=8, max_wait_ms=300))
        await b.start()
        t0 = time.monotonic()
        first = asyncio.ensure_future(b.run([1], [1]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.run([2], [1]))  # joins the first within the wait
        await asyncio.gather(first, second)
        elapsed = time.monotonic() - t0
        await b.stop()
        return elapsed

    elapsed = _run(go())
    assert seen == [2] and 0.25 < elapsed < 5


# ------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def rms(seq2seq_rm_dir, scalar_rm_dir):
    s2s = load_reward_model(seq2seq_rm_dir)
    prob = Seq2SeqRewardModel(s2s.model, s2s.tokenizer, s2s.template, ExtractionConfig(magnitude="prob"))
    return {"seq2seq": s2s, "seq2seq-prob": prob, "scalar": load_reward_model(scalar_rm_dir)}


@contextlib.contextmanager
def serving(rm, api_key=None, score_fn=score_rows, **options):
    cfg = ServeConfig(rm="test-rm", **options)
    with ServerThread(create_app(rm, cfg, api_key=api_key, score_fn=score_fn), cfg) as srv:
        yield srv


def call(srv, method, path, body=None, *, key=None, raw=None, timeout=60, conn=None):
    """(status, parsed JSON) of one request; ``raw``: bytes sent as they are."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    if own:
        conn.close()
    return resp.status, json.loads(payload) if payload else None


def _rows(sample_rows, n=10):
    rows = [{"prompt": r["prompt"], "response": r["chosen" if i % 2 else "rejected"]}
            for i, r in enumerate(sample_rows[:n])]
    rows.append({"prompt": CHAT_PROMPT, "response": "Four."})
    return rows


@pytest.mark.parametrize("which", ["seq2seq", "seq2seq-prob", "scalar"])
def test_token_rewards_equal_rm_score(rms, which, sample_rows, tmp_path):
    rm = rms[which]
    data = write_jsonl(tmp_path / "r.jsonl", _rows(sample_rows))
    expected = score_file(rm, data)  # what `rm score --data r.jsonl` writes as its rows
    prompts = [r["prompt"] for r in expected]
    with serving(rm) as srv:
        status, by_text = call(srv, "POST", "/token_rewards",
                               {"prompts": prompts, "responses": [r["response"] for r in expected]})
        assert status == 200, by_text
        status, by_ids = call(srv, "POST", "/token_rewards",
                              {"prompts": prompts, "response_ids": [r["token_ids"] for r in expected]})
        assert status == 200, by_ids
    for got in (by_text, by_ids):
        assert got["kind"] == rm.kind and len(got["rewards"]) == len(expected)
        for b, row in enumerate(expected):
            assert got["tokens"][b] == row["tokens"] and got["token_ids"][b] == row["token_ids"]
            assert len(got["rewards"][b]) == len(row["rewards"])
            assert got["rewards"][b] == pytest.approx(row["rewards"], abs=ATOL)
            headline = "score_sum" if rm.kind == "scalar" else "score_mean"  # sequence_score: mean (default)
            assert got["scores"][b] == pytest.approx(row[headline], abs=ATOL)
            if rm.kind == "seq2seq":
                assert got["predicted"][b] == row["rm_tokens"]
        if rm.kind == "scalar":
            assert got["predicted"] is None and got["predicted_ids"] is None
    if which == "seq2seq-prob":  # the comparison is not between two constant vectors
        assert len({round(x, 3) for r in by_text["rewards"] for x in r}) > 5


@pytest.mark.parametrize("which", ["seq2seq", "scalar"])
def test_openrlhf_get_reward_is_the_sequence_score(rms, which, sample_rows):
    rm = rms[which]
    eos = rm.tokenizer.eos_token
    samples = [(r["prompt"], r["chosen"]) for r in sample_rows[:5]]
    # As OpenRLHF sends them: query = prompt text + response text (+ the EOS token's text when finished).
    queries = [p + " " + resp + eos for p, resp in samples[:4]] + [samples[4][0] + samples[4][1]]
    ids = [encode_response(" " + resp, rm.tokenizer) for _, resp in samples[:4]]
    ids.append(rm.tokenizer(samples[4][1], add_special_tokens=False).input_ids)  # truncated: no EOS
    how = "mean" if rm.kind == "seq2seq" else "sum"
    expected = [float(score_rows(rm, [Row(p, i, 0)])[0].score) for (p, _), i in zip(samples, ids, strict=True)]
    for (p, _), i, e in zip(samples, ids, expected, strict=True):  # independently of score_rows
        tr = rm.token_rewards([p], torch.tensor([i]), torch.ones(1, len(i), dtype=torch.bool))
        assert e == pytest.approx(float(tr.sequence_scores(how)[0]), abs=ATOL)
    body = {"query": queries, "prompts": [p for p, _ in samples], "labels": [""] * 5}
    with serving(rm) as srv:
        status, got = call(srv, "POST", "/get_reward", body)
        assert status == 200, got
        assert got["rewards"] == pytest.approx(expected, abs=ATOL) and got["scores"] == got["rewards"]
        assert set(got) == {"rewards", "scores", "extra_logs"}
        status, one = call(srv, "POST", "/get_reward", {"query": queries[:1], "prompts": body["prompts"][:1],
                                                        "labels": [None]})
        assert status == 200 and one["rewards"] == pytest.approx(expected[:1], abs=ATOL)
        status, err = call(srv, "POST", "/get_reward", {"query": ["something else"], "prompts": ["Hi"]})
        assert status == 422 and "does not start with" in err["error"]


def test_api_key_is_required_and_checked(rms, seq2seq_rm_dir, monkeypatch, caplog):
    key = "s3cret-Key_123"
    body = {"prompts": ["Hi"], "responses": ["Hello."]}
    with serving(rms["scalar"], api_key=key) as srv:
        for path, payload in (("/health", None), ("/token_rewards", body)):
            method = "GET" if payload is None else "POST"
            assert call(srv, method, path, payload)[0] == 401
            status, err = call(srv, method, path, payload, key="wrong")
            assert status == 401 and key not in json.dumps(err)
            assert call(srv, method, path, payload, key=key)[0] == 200
    assert key not in caplog.text
    # Without the variable (unset or empty) the server refuses to start.
    monkeypatch.delenv("S2S_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="S2S_TEST_KEY"):
        read_api_key("S2S_TEST_KEY")
    monkeypatch.setenv("S2S_TEST_KEY", "  ")
    assert main(["serve", "--rm", seq2seq_rm_dir, "--api-key-env", "S2S_TEST_KEY"]) == 2
    assert "S2S_TEST_KEY is unset or empty" in caplog.text


def test_serve_refuses_a_folder_that_is_no_rm_folder_and_bad_options(rms, tiny_model_dir, seq2seq_rm_dir, caplog):
    assert main(["serve", "--rm", tiny_model_dir]) == 2
    assert "seq2seq_rm.json is missing" in caplog.text
    assert main(["serve", "--rm", seq2seq_rm_dir, "--max-batch-size", "0"]) == 2
    assert "max_batch_size must be >= 1" in caplog.text
    assert main(["serve", "--rm", seq2seq_rm_dir, "--max-request-rows", "10", "--max-queue-rows", "5"]) == 2
    with pytest.raises(ConfigError, match="window"):
        create_app(rms["seq2seq"], ServeConfig(rm="x", max_batch_tokens=16))


def test_bad_requests_get_a_4xx_json_error(rms):
    rm = rms["seq2seq"]
    ok = {"prompts": ["Hi"], "responses": ["Hello."]}
    cases = [
        (400, b'{"prompts": ["Hi"], "responses": [', "not valid JSON"),
        (422, ["Hi"], "must be a JSON object"),
        (422, {**ok, "temperature": 1}, "unknown field 'temperature'"),
        (422, {"prompts": ["Hi", "Yo"], "responses": ["Hello."]}, "2 prompts but 1 responses"),
        (422, {**ok, "response_ids": [[5]]}, "exactly one of"),
        (422, {"responses": ["Hello."]}, "missing field 'prompts'"),
        (422, {"prompts": ["Hi"], "responses": [3]}, "responses[0]"),
        (422, {"prompts": [[{"role": "bot", "content": "x"}]], "responses": ["a"]}, "prompts[0]"),
        (422, {"prompts": ["Hi"], "responses": ["  "]}, "empty response"),
        (422, {"prompts": ["Hi"], "response_ids": [[1, 10**6]]}, "outside the vocabulary"),
        (422, {"prompts": ["Hi"], "response_ids": [[True]]}, "response_ids[0][0]"),
        (422, {"prompts": ["Hi"], "response_ids": [[5] * rm.max_length]}, "too long"),
        (413, {"prompts": ["Hi"] * 5, "responses": ["a"] * 5}, "limit is 4"),
        (413, {"prompts": ["x" * 9000], "responses": ["a"]}, "bytes"),
    ]
    with serving(rm, max_request_rows=4, max_body_bytes=8192) as srv:
        for status, body, words in cases:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            got_status, err = call(srv, "POST", "/token_rewards", raw=raw)
            assert (got_status, words in err["error"]) == (status, True), (body, err)
        status, err = call(srv, "POST", "/get_reward", {"query": ["a"], "prompts": ["a"], "label": [1]})
        assert status == 422 and "unknown field 'label'" in err["error"]
        assert call(srv, "GET", "/nowhere")[0] == 404
        status, err = call(srv, "GET", "/token_rewards")
        assert status == 405 and "error" in err
        status, health = call(srv, "GET", "/health")
        assert status == 200 and health["stats"]["submitted"] == 0  # nothing bad reached the model
        assert call(srv, "POST", "/token_rewards", ok)[0] == 200


def test_an_exception_in_the_rm_is_a_500_and_the_server_goes_on(rms):
    rm = rms["scalar"]

    release = threading.Event()

    def flaky(rm, rows):
        if any("SLOW" in r.prompt for r in rows):
            release.wait(30)
        if any("BOOM" in r.prompt for r in rows):
            raise RuntimeError("injected failure")
        return score_rows(rm, rows)

    good = {"prompts": ["Hi"], "responses": ["Hello."]}
    with serving(rm, score_fn=flaky) as srv:
        status, err = call(srv, "POST", "/token_rewards", {"prompts": ["BOOM"], "responses": ["x"]})
        assert status == 500 and "injected failure" in err["error"]
        status, expected = call(srv, "POST", "/token_rewards", good)
        assert status == 200
        # A failing row batched with a good one fails alone: the worker is busy with SLOW while both queue.
        out = {}
        slow = threading.Thread(target=lambda: out.setdefault("slow", call(srv, "POST", "/token_rewards",
                                                                           {"prompts": ["SLOW"], "responses": ["x"]})))
        slow.start()
        _wait_for(srv, lambda s: s["forward_passes"] == 3 and s["queued"] == 0)  # SLOW is being computed
        threads = [threading.Thread(target=lambda k=k, b=b: out.setdefault(k, call(srv, "POST", "/token_rewards", b)))
                   for k, b in (("boom", {"prompts": ["BOOM"], "responses": ["x"]}), ("good", good))]
        for t in threads:
            t.start()
        _wait_for(srv, lambda s: s["submitted"] == 5)
        release.set()
        for t in [slow, *threads]:
            t.join(60)
        assert out["slow"][0] == 200 and out["boom"][0] == 500 and out["good"] == (200, expected)
        stats = call(srv, "GET", "/health")[1]["stats"]
        assert stats["largest_batch"] == 2 and stats["failed"] == 2 and stats["failed_passes"] == 3


def _wait_for(srv, condition, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = call(srv, "GET", "/health")[1]["stats"]
        if condition(stats):
            return stats
        time.sleep(0.02)
    raise AssertionError(f"timed out; stats {stats}")


def test_concurrent_clients_lose_nothing_and_get_the_one_at_a_time_answer(rms, sample_rows):
    rm = rms["seq2seq-prob"]
    pool = [(r["prompt"], r["chosen" if i % 2 else "rejected"]) for i, r in enumerate(sample_rows[:16])]
    alone = {}  # the answer of each row scored on its own (batch of one)
    for p, resp in pool:
        ids = encode_response(resp, rm.tokenizer)
        alone[(p, resp)] = score_rows(rm, [Row(p, ids, 0)])[0].rewards
    clients, per_client = 8, 25
    answers, errors = [], []

    def client(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        try:
            for _ in range(per_client):
                rows = rng.sample(pool, rng.randint(1, 3))
                status, got = call(srv, "POST", "/token_rewards", {"prompts": [p for p, _ in rows],
                                                                    "responses": [r for _, r in rows]}, conn=conn)
                answers.append((rows, status, got))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
        finally:
            conn.close()

    with serving(rm, max_batch_size=16, max_wait_ms=5) as srv:
        threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        stats = call(srv, "GET", "/health")[1]["stats"]
    assert not errors and len(answers) == clients * per_client
    n_rows = 0
    for rows, status, got in answers:
        assert status == 200, got
        for b, key in enumerate(rows):
            assert got["rewards"][b] == pytest.approx(alone[key], abs=ATOL)
            n_rows += 1
    assert stats["submitted"] == stats["computed"] == n_rows and stats["failed"] == stats["cancelled"] == 0
    assert stats["forward_passes"] < clients * per_client and stats["largest_batch"] > 1  # batching happened


def test_a_client_that_disconnects_does_not_stall_the_others(rms):
    rm = rms["scalar"]
    release = threading.Event()

    def held(rm, rows):
        if any("SLOW" in r.prompt for r in rows):
            release.wait(30)
        return score_rows(rm, rows)

    good = {"prompts": ["Hi"], "responses": ["Hello."]}
    with serving(rm, score_fn=held) as srv:
        status, expected = call(srv, "POST", "/token_rewards", good)
        out = {}
        slow = threading.Thread(target=lambda: out.setdefault("slow", call(srv, "POST", "/token_rewards",
                                                                           {"prompts": ["SLOW"], "responses": ["x"]})))
        slow.start()
        _wait_for(srv, lambda s: s["forward_passes"] == 2 and s["queued"] == 0)  # the worker is busy with SLOW
        # A client sends its request, and gives up (closes the connection) while the row waits.
        body = json.dumps({"prompts": ["Bye"], "responses": ["See you."]}).encode()
        impatient = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        impatient.sendall(b"POST /token_rewards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        _wait_for(srv, lambda s: s["submitted"] == 3 and s["queued"] == 1)
        impatient.close()
        _wait_for(srv, lambda s: s["queued"] == 0)  # the server noticed, and cancelled the row
        other = threading.Thread(target=lambda: out.setdefault("other", call(srv, "POST", "/token_rewards", good)))
        other.start()
        _wait_for(srv, lambda s: s["submitted"] == 4)
        release.set()
        for t in (slow, other):
            t.join(60)
        assert out["slow"][0] == 200 and out["other"] == (200, expected)
        stats = call(srv, "GET", "/health")[1]["stats"]
    assert stats["cancelled"] == 1 and stats["computed"] == 3  # the abandoned row was never computed


def test_serve_command_runs_a_server(scalar_rm_dir, monkeypatch, caplog):
    """What `seq2seq-rm serve --rm DIR --port 0 --api-key-env VAR --max-batch-size 4` runs, in a thread
    (the flags through the command's own parser, then run_server: load, bind, serve, stop)."""
    monkeypatch.setenv("S2S_SERVE_KEY", "k-123")
    cfg = serve_config(parse_args(["serve", "--rm", scalar_rm_dir, "--port", "0", "--api-key-env", "S2S_SERVE_KEY",
                                   "--max-batch-size", "4"]))
    assert (cfg.port, cfg.host, cfg.max_batch_size, cfg.max_wait_ms) == (0, "127.0.0.1", 4, 5.0)
    stop = threading.Event()
    caplog.set_level("INFO", logger="seq2seq_rm")
    thread = threading.Thread(target=run_server, args=(cfg,), kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while "serving the scalar RM" not in caplog.text and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(r.getMessage() for r in caplog.records if "serving the scalar RM" in r.getMessage())
        srv = types.SimpleNamespace(port=int(line.split("http://127.0.0.1:")[1].split()[0]))
        _wait_until_up(srv, key="k-123")
        assert call(srv, "GET", "/health")[0] == 401
        status, got = call(srv, "POST", "/token_rewards", {"prompts": ["Hi"], "responses": ["Hello."]}, key="k-123")
        assert status == 200 and got["kind"] == "scalar" and len(got["rewards"][0]) == len(got["tokens"][0])
        assert call(srv, "GET", "/health", key="k-123")[1]["limits"]["max_batch_size"] == 4
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and "reward server stopped" in caplog.text
    assert "k-123" not in caplog.text


def _wait_until_up(srv, key=None, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(srv, "GET", "/health", key=key, timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
