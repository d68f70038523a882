"""rewards/served.py without vLLM: a stand-in server on 127.0.0.1 answers the two calls it makes
(``GET /models``, ``POST /completions`` with ``prompt_logprobs``) in vLLM 0.32's format, computing the
log-probs with the local RM's model (a plain forward pass over ``source ++ response``, one row at a
time, unpadded). The served extraction must then equal the local one. The real server is tested in
tests/optional/test_served_rm.py (make test-vllm)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from helpers import write_jsonl

from seq2seq_rm.errors import Seq2SeqRMError
from seq2seq_rm.rewards import load_reward_model
from seq2seq_rm.rewards.base import encode_responses
from seq2seq_rm.rewards.views import score_file
from seq2seq_rm.serve.app import ServerThread, create_app
from seq2seq_rm.serve.config import ServeConfig


def _prompt_logprobs(model, ids: list[int]) -> list:
    """vLLM's ``prompt_logprobs=1`` answer for one prompt: per position the actual token (with its
    rank: 1 + the number of strictly more likely tokens) and the rank-1 token; the first is null."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    out = [None]
    for t in range(1, len(ids)):
        row, y = logp[t - 1], ids[t]
        entry = {str(y): {"logprob": float(row[y]), "rank": int((row > row[y]).sum()) + 1, "decoded_token": ""}}
        top = int(row.argmax())
        entry.setdefault(str(top), {"logprob": float(row[top]), "rank": 1, "decoded_token": ""})
        out.append(entry)
    return out


@pytest.fixture
def fake_vllm(seq2seq_rm_dir):
    model = load_reward_model(seq2seq_rm_dir).model
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body: dict, code: int = 200):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"data": [{"id": "rm", "root": seq2seq_rm_dir, "max_model_len": 4096}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if body.get("prompt_logprobs") != 1 or body.get("max_tokens") != 1:
                return self._send({"error": "unexpected request"}, 400)
            self._send({"choices": [{"index": i, "prompt_logprobs": _prompt_logprobs(model, p)}
                                    for i, p in reversed(list(enumerate(body["prompt"])))]})  # any order

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


@pytest.mark.parametrize("magnitude", ["constant", "prob", "logratio"])
@pytest.mark.parametrize("rematch", ["zero", "positive"])
def test_served_extraction_reads_vllm_prompt_logprobs_like_the_local_forward_pass(
        seq2seq_rm_dir, sample_rows, fake_vllm, magnitude, rematch):
    url, seen = fake_vllm
    local = load_reward_model(seq2seq_rm_dir)
    served = load_reward_model(seq2seq_rm_dir, server=url)
    assert served.model_name == "rm" and served.model is None
    rows = sample_rows[:6]
    prompts = [r["prompt"] for r in rows]
    ids, mask = encode_responses([r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)],
                                 local.tokenizer)
    ids, mask = torch.flip(ids, [1]), torch.flip(mask, [1])  # left-padded input: the layout must not matter
    local.extraction = served.extraction = dataclasses.replace(local.extraction, magnitude=magnitude, rematch=rematch)
    a = local.token_rewards(prompts, ids, mask)
    b = served.token_rewards(prompts, ids, mask)
    assert torch.equal(a.agree, b.agree) and torch.equal(a.predicted_ids, b.predicted_ids)
    assert torch.allclose(a.rewards, b.rewards, atol=1e-5)
    assert 0 < int(a.agree.sum()) < int(mask.sum())
    assert len(seen) == 1 and len(seen[0]["prompt"]) == len(rows)  # the whole batch in one request


def test_a_server_that_is_not_there_or_answers_without_logprobs_is_named(seq2seq_rm_dir, fake_vllm, sample_rows):
    with pytest.raises(Seq2SeqRMError, match=r"127.0.0.1:9/v1/models: .*is the vLLM server running"):
        load_reward_model(seq2seq_rm_dir, server="http://127.0.0.1:9/v1")
    url, _ = fake_vllm
    served = load_reward_model(seq2seq_rm_dir, server=url)
    served._request = lambda method, path, body=None: {"choices": [{"index": 0, "text": "x"}]}
    ids, mask = encode_responses([sample_rows[0]["chosen"]], served.tokenizer)
    with pytest.raises(Seq2SeqRMError, match="no prompt_logprobs"):
        served.token_rewards([sample_rows[0]["prompt"]], ids, mask)


def test_serve_scores_through_a_vllm_server_when_given_rm_server(seq2seq_rm_dir, sample_rows, fake_vllm, tmp_path):
    """`seq2seq-rm serve --rm DIR --rm-server URL`: the reward server answers /token_rewards with the
    served RM (no weights loaded here), equal to `rm score` with the local RM."""
    url, _ = fake_vllm
    cfg = ServeConfig(rm=seq2seq_rm_dir, rm_server=url)
    served = load_reward_model(seq2seq_rm_dir, server=cfg.rm_server)
    rows = [{"prompt": r["prompt"], "response": r["chosen"]} for r in sample_rows[:5]]
    expected = score_file(load_reward_model(seq2seq_rm_dir), write_jsonl(tmp_path / "r.jsonl", rows))
    with ServerThread(create_app(served, cfg), cfg) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        body = {"prompts": [r["prompt"] for r in rows], "responses": [r["response"] for r in rows]}
        conn.request("POST", "/token_rewards", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        got = json.loads(resp.read())
        assert resp.status == 200, got
    assert served.requests >= 1
    for b, row in enumerate(expected):
        assert got["tokens"][b] == row["tokens"] and got["predicted"][b] == row["rm_tokens"]
        assert got["rewards"][b] == pytest.approx(row["rewards"], abs=1e-5)
