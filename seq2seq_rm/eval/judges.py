"""Pairwise judges: one interface for bundled-task oracles, local HF models and OpenAI-compatible servers.

A judge receives a batch of ``(prompt, response_a, response_b)`` triples and returns one
:class:`Judgement` per triple: ``winner`` is ``"A"`` (the first response shown is better),
``"B"``, ``"tie"`` or ``"invalid"`` (no usable verdict; ``error`` says why). The win-rate
protocol in :mod:`seq2seq_rm.eval.winrate` calls every judge in both presentation orders, so a
judge never has to correct its own position bias.

* :class:`OracleJudge` compares ``score(prompt_text, response)`` of a bundled task's oracle.
* :class:`HFJudge` reads a local causal LM's next-token log-probabilities of "A" vs "B" after
  :data:`JUDGE_PROMPT` (no generation).
* :class:`OpenAIJudge` asks an OpenAI-compatible ``/chat/completions`` endpoint (standard library
  HTTP, retries, on-disk cache) and parses the verdict from the reply with :func:`parse_verdict`.

:func:`make_judge` builds one from a spec string: ``oracle:TASK``, ``hf:PATH`` or ``openai:MODEL``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..data.records import Prompt, prompt_text
from ..errors import ConfigError, Seq2SeqRMError
from ..io import atomic_write_text

logger = logging.getLogger(__name__)

WINNERS = ("A", "B", "tie", "invalid")
Item = tuple[Prompt, str, str]

#: The comparison prompt shared by :class:`HFJudge` and :class:`OpenAIJudge`. It asks for one
#: letter; the HF judge wraps it in the tokenizer's chat template (user turn + generation prompt)
#: so the very next token is the verdict.
JUDGE_PROMPT = (
    "You are comparing two responses to the same user request. Decide which response is better: "
    "more helpful, more correct and harmless, following the request.\n\n"
    "[User request]\n{prompt}\n\n"
    "[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}\n\n"
    "Which response is better? Answer with a single letter: A if Response A is better, "
    "B if Response B is better."
)
#: Extra instruction for API judges, which may also declare a tie.
API_SYSTEM_PROMPT = (
    "You are an impartial judge of response quality. Reply with exactly one of: A, B or tie. "
    "Do not explain."
)


@dataclass
class Judgement:
    """One verdict: ``winner`` in ``"A" | "B" | "tie" | "invalid"``; ``raw`` the judge's own output
    (reply text, log-probabilities or scores); ``error`` why the verdict is invalid (else None)."""

    winner: str
    raw: str | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.winner in ("A", "B", "tie")


class Judge(Protocol):
    """A pairwise judge; ``judge`` is batched and returns one Judgement per item, in order."""

    name: str

    def judge(self, items: list[Item]) -> list[Judgement]: ...


def format_judge_prompt(prompt: Prompt, response_a: str, response_b: str) -> str:
    """The user message of the comparison (see :data:`JUDGE_PROMPT`)."""
    return JUDGE_PROMPT.format(prompt=prompt_text(prompt), response_a=response_a, response_b=response_b)


def _verdict_from_diff(diff: float, margin: float) -> str:
    if not math.isfinite(diff):
        return "invalid"
    if abs(diff) < margin:
        return "tie"
    return "A" if diff > 0 else "B"


# --------------------------------------------------------------------------------------------- oracle


class OracleJudge:
    """Judge by a scoring function ``score(prompt_text, response) -> float`` (higher is better).

    The bundled tasks supply one as ``seq2seq_rm.tasks.get_task(name).score``. A score difference
    smaller than ``tie_margin`` in absolute value is a tie; a non-finite score is invalid.
    """

    def __init__(self, score_fn: Callable[[str, str], float], name: str = "oracle", tie_margin: float = 1e-9):
        self.score_fn, self.name, self.tie_margin = score_fn, name, tie_margin

    def judge(self, items: list[Item]) -> list[Judgement]:
        out = []
        for prompt, a, b in items:
            text = prompt_text(prompt)
            sa, sb = float(self.score_fn(text, a)), float(self.score_fn(text, b))
            winner = _verdict_from_diff(sa - sb, self.tie_margin)
            raw = f"score(A)={sa:.6g} score(B)={sb:.6g}"
            out.append(Judgement(winner, raw, None if winner != "invalid" else "non-finite oracle score"))
        return out


# --------------------------------------------------------------------------------------------- local HF


class HFJudge:
    """A local Hugging Face causal LM as a pairwise judge, by next-token log-probabilities.

    Each item becomes :data:`JUDGE_PROMPT` as a user turn of the tokenizer's chat template with
    the generation prompt appended (without a chat template: the prompt text followed by
    ``"\\nAnswer:\\n"``; see :meth:`build_prompt`). One batched forward pass
    (left padding, position ids counted from each row's first real token) gives the log-probability
    of the "A" and "B" tokens at the next position; the verdict is the larger one, a tie when
    ``|logp(A) - logp(B)| < tie_margin``. The "A"/"B" token ids are the tokens the tokenizer
    produces for the letter right after the prompt ending. Prompts longer than ``max_length``
    tokens are invalid (reported, never truncated silently).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        batch_size: int = 8,
        tie_margin: float = 1e-6,
        max_length: int | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        import torch

        from ..models.loading import load_causal_lm, load_tokenizer

        self.name = f"hf:{model_dir}"
        self.batch_size, self.tie_margin = batch_size, tie_margin
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_dir, trust_remote_code=trust_remote_code)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_length = min(max_length or limit, limit)
        self.use_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.letter_ids = {letter: self._letter_id(letter) for letter in ("A", "B")}
        if self.letter_ids["A"] == self.letter_ids["B"]:
            raise Seq2SeqRMError(f"{model_dir}: the tokenizer maps 'A' and 'B' to the same token")

    def build_prompt(self, prompt: Prompt, response_a: str, response_b: str) -> str:
        """The full text fed to the model; its next token is the verdict."""
        user = format_judge_prompt(prompt, response_a, response_b)
        if self.use_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return user + "\nAnswer:\n"

    def _encode(self, text: str) -> list[int]:
        # A chat template already holds any BOS token it wants; plain text gets the tokenizer's own.
        return self.tokenizer(text, add_special_tokens=not self.use_template)["input_ids"]

    def _letter_id(self, letter: str) -> int:
        probe = self.build_prompt("q", "x", "y")
        base, full = self._encode(probe), self._encode(probe + letter)
        if len(full) > len(base) and full[: len(base)] == base:
            return full[len(base)]
        ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
        return ids[0]

    def _forward(self, ids_list: list[list[int]]):
        import torch

        from ..layout import left_pad, pad_id, position_ids

        # left padding: the last position is every row's next token
        ids, mask = left_pad(ids_list, pad_id(self.tokenizer))
        with torch.no_grad():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.long().to(self.device),
                position_ids=position_ids(mask).to(self.device),
                logits_to_keep=1,
            )
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()

    def judge(self, items: list[Item]) -> list[Judgement]:
        results: list[Judgement | None] = [None] * len(items)
        todo: list[tuple[int, list[int]]] = []
        for i, (prompt, a, b) in enumerate(items):
            ids = self._encode(self.build_prompt(prompt, a, b))
            if len(ids) > self.max_length:
                results[i] = Judgement(
                    "invalid", None, f"judge prompt has {len(ids)} tokens, more than the limit {self.max_length}"
                )
            else:
                todo.append((i, ids))
        # Similar lengths together: less padding per batch.
        todo.sort(key=lambda t: len(t[1]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            logp = self._forward([ids for _, ids in chunk])
            for row, (i, _) in enumerate(chunk):
                la = float(logp[row, self.letter_ids["A"]])
                lb = float(logp[row, self.letter_ids["B"]])
                winner = _verdict_from_diff(la - lb, self.tie_margin)
                results[i] = Judgement(
                    winner, f"logp(A)={la:.6f} logp(B)={lb:.6f}", None if winner != "invalid" else "non-finite logits"
                )
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- verdicts

_STRIP = re.compile(r"[*_`#\"'\[\](){}<>|~]")
_TIE_WORDS = r"(?:tie|tied|draw|equal|equally good|both|neither|same)"
_SHORT = re.compile(
    r"^(?:(?:final\s+)?(?:answer|verdict|winner|choice|decision|judgement|judgment)\s*(?:is)?\s*[:=\-]?\s*)?"
    r"(?:the\s+better\s+(?:response|answer)\s+is\s*:?\s*)?"
    r"(?:(?:response|answer|output|assistant)\s+)?"
    rf"(a|b|{_TIE_WORDS})\s*(?:is\s+better|wins|is\s+the\s+better\s+(?:one|response))?[\s.!:;,]*$",
    re.IGNORECASE,
)
_EXPLICIT = (
    re.compile(r"\[\[\s*(a|b|tie)\s*\]\]", re.IGNORECASE),
    re.compile(
        r"\b(?:verdict|winner|final answer|better response|better answer|answer|choice)\s*(?:is)?\s*[:=]?\s*"
        r"(?:response\s+)?\**\s*(a|b|tie)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:response|answer|output)\s+(a|b)\b(?=\s+(?:is\s+(?:better|preferable|superior)|wins))",
               re.IGNORECASE),    re.compile(r"\b(?:it'?s\s+a\s+(tie)|(?:both|they)\s+are\s+(equal)ly\s+good|(neither)\s+is\s+better)\b",
               re.IGNORECASE),
)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from a judge's reply, or None when it cannot be read unambiguously.

    Accepted: a short reply that is just the verdict, with any markdown or punctuation
    (``"A"``, ``"**B**"``, ``"Response A"``, ``"[[B]]"``, ``"Verdict: tie"``, ``"A is better."``),
    or a longer reply whose explicit verdict phrases (``[[A]]``, ``"verdict: B"``,
    ``"Response A is better"``) all name the same answer. Anything else (empty, both letters
    claimed, prose with no verdict) is None, which the caller turns into an invalid judgement.
    """
    if not text or not text.strip():
        return None
    raw = text.strip()
    short = " ".join(_STRIP.sub(" ", raw).split())
    m = _SHORT.match(short)
    if m:
        v = m.group(1).lower()
        return v.upper() if v in ("a", "b") else "tie"
    found = set()
    for pat in _EXPLICIT:
        for g in pat.findall(raw.replace("*", "")):
            g = next((x for x in g if x), "") if isinstance(g, tuple) else g
            found.add(g.upper() if g.lower() in ("a", "b") else "tie")
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------- OpenAI


class _Fatal(Exception):
    """A response the request cannot recover from by retrying (e.g. 401, 404)."""


def default_cache_dir() -> Path:
    root = os.environ.get("SEQ2SEQ_RM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "seq2seq_rm")
    return Path(root) / "judge"


class OpenAIJudge:
    """An OpenAI-compatible chat-completions server as a pairwise judge.

    Each item is one ``POST {base_url}/chat/completions`` with body
    ``{"model", "messages": [system, user], "temperature": 0, "max_tokens"}`` (the user message is
    :data:`JUDGE_PROMPT`), sent with the standard library by ``concurrency`` threads. Timeouts,
    connection errors, HTTP 429 and 5xx are retried up to ``max_retries`` times with exponential
    backoff and jitter (``backoff * 2**attempt * U(0.5, 1.5)``, at most ``max_backoff`` s, a
    ``Retry-After`` header is honoured up to the same cap); 400/413/422 make that item invalid and
    401/403/404 stop the run (a wrong key, model or URL). An item whose retries run out is invalid.

    Successful replies are cached on disk under ``cache_dir`` keyed by the sha256 of the canonical
    request body (model, messages, parameters; never the key), written atomically, so a rerun sends
    no request. The API key is read from ``api_key_env`` (``None`` or ``""`` for servers that need
    none); it is sent only in the ``Authorization`` header and scrubbed from any error text.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        concurrency: int = 4,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        seed: int | None = None,
    ):
        if not model:
            raise ConfigError("openai judge: a model name is required (openai:MODEL)")
        self.model, self.base_url = model, base_url.rstrip("/")
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env or None
        self._key: str | None = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise Seq2SeqRMError(
                    f"the OpenAI-compatible judge needs an API key in the environment variable "
                    f"{self.api_key_env}, which is not set (export {self.api_key_env}=...; for a local "
                    "server that needs no key, use api_key_env=None / --api-key-env '')"
                )
            self._key = key
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, max(1, concurrency)
        self.max_tokens, self.backoff, self.max_backoff = max_tokens, backoff, max_backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._rng = random.Random(seed)
        self.requests_sent = 0
        self.cache_hits = 0

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    # -- request pieces

    def request_body(self, prompt: Prompt, response_a: str, response_b: str) -> dict:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": API_SYSTEM_PROMPT},
                {"role": "user", "content": format_judge_prompt(prompt, response_a, response_b)},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    @staticmethod
    def cache_key(body: dict) -> str:
        canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _redact(self, text: str) -> str:
        if self._key and self._key in text:
            text = text.replace(self._key, "***")
        return text

    def _sleep_for(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff, self.backoff * (2**attempt)) * (0.5 + self._rng.random())
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
            except ValueError:
                pass
        return delay

    def _post(self, body: dict) -> str:
        """The reply text of one request, retrying transient failures; raises _Fatal or RuntimeError."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        url = f"{self.base_url}/chat/completions"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read().decode("utf-8", errors="replace")
                return _reply_text(payload)
            except urllib.error.HTTPError as e:
                detail = self._redact(_error_detail(e))
                last = f"HTTP {e.code}: {detail}"
                if e.code in (401, 403, 404):
                    raise _Fatal(f"{url} answered {last}") from None
                if e.code != 429 and e.code < 500:
                    raise ValueError(last) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except TimeoutError as e:
                last = f"timed out after {self.timeout:g} s ({type(e).__name__})"
            except urllib.error.URLError as e:
                last = f"connection failed: {self._redact(str(e.reason))}"
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = f"connection failed: {type(e).__name__}: {self._redact(str(e))}"
            if attempt < self.max_retries:
                delay = self._sleep_for(attempt, retry_after)
                logger.warning(
                    "%s: %s; retry %d/%d in %.2f s", self.name, last, attempt + 1, self.max_retries, delay
                )
                time.sleep(delay)
        raise RuntimeError(f"gave up after {self.max_retries + 1} attempts: {last}")

    def _judge_one(self, item: Item) -> Judgement:
        body = self.request_body(*item)
        key = self.cache_key(body)
        path = self._cache_path(key)
        reply = None
        if path.is_file():
            try:
                reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
                self.cache_hits += 1
            except (OSError, ValueError, KeyError, TypeError):
                reply = None  # a damaged cache entry is simply asked again
        if reply is None:
            try:
                reply = self._post(body)
            except _Fatal:
                raise
            except (ValueError, RuntimeError) as e:
                return Judgement("invalid", None, self._redact(str(e)))
            entry = {"key": key, "request": body, "reply": reply, "created": time.time()}
            atomic_write_text(path, json.dumps(entry, ensure_ascii=False, indent=1) + "\n")
        verdict = parse_verdict(reply)
        if verdict is None:
            return Judgement("invalid", reply, f"could not read a verdict (A, B or tie) from the reply {reply!r:.200}")
        return Judgement(verdict, reply, None)

    def judge(self, items: list[Item]) -> list[Judgement]:
        sent, hits = self.requests_sent, self.cache_hits
        try:
            if self.concurrency == 1 or len(items) <= 1:
                out = [self._judge_one(it) for it in items]
            else:
                with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                    out = list(pool.map(self._judge_one, items))
        except _Fatal as e:
            raise Seq2SeqRMError(f"{self.name}: {e}") from None
        logger.info(
            "%s: %d items, %d cached, %d requests sent",
            self.name, len(items), self.cache_hits - hits, self.requests_sent - sent,
        )
        return out


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode("utf-8", errors="replace")
    except Exception:  # the body of an error response is a nicety
        body = ""
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = body.strip()
    return (msg or str(e.reason or ""))[:300]


def _reply_text(payload: str) -> str:
    try:
        obj = json.loads(payload)
        content = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"not a chat-completions response: {payload[:200]!r}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# --------------------------------------------------------------------------------------------- spec

JUDGE_SPECS = "oracle:TASK, hf:PATH or openai:MODEL"


def make_judge(spec: str, base_url: str | None = None, **kw) -> Judge:
    """A judge from ``oracle:TASK`` (a bundled task's oracle score), ``hf:PATH`` (a local causal LM)
    or ``openai:MODEL`` (an OpenAI-compatible server at ``base_url``, default the OpenAI API).
    Extra keyword arguments go to the judge's constructor."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ConfigError(f"judge spec {spec!r} must be one of {JUDGE_SPECS}")
    if kind == "oracle":
        try:
            from ..tasks import get_task
        except ImportError as e:
            raise ConfigError(f"oracle judges need seq2seq_rm.tasks.get_task, which is unavailable: {e}") from None
        task = get_task(arg)
        return OracleJudge(task.score, name=spec, **kw)
    if kind == "hf":
        return HFJudge(arg, **kw)
    if kind == "openai":
        return OpenAIJudge(arg, base_url or "https://api.openai.com/v1", **kw)
    raise ConfigError(f"unknown judge kind {kind!r} in {spec!r}; expected {JUDGE_SPECS}")


def judge_all(judge: Judge, items: Sequence[Item]) -> list[Judgement]:
    """``judge.judge`` with its length checked (a judge must answer every item)."""
    out = judge.judge(list(items))
    if len(out) != len(items):
        raise Seq2SeqRMError(f"judge {judge.name} returned {len(out)} verdicts for {len(items)} items")
    for j in out:
        if j.winner not in WINNERS:
            raise Seq2SeqRMError(f"judge {judge.name} returned an unknown winner {j.winner!r}")
    return out
