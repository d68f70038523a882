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
  HTTP with a total deadline per request, retries, fail-fast errors, on-disk cache keyed by the
  endpoint) and parses the verdict from the reply with :func:`parse_verdict`.

:func:`make_judge` builds one from a spec string: ``oracle:TASK``, ``hf:PATH`` or ``openai:MODEL``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import string
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..data.records import Prompt, prompt_text
from ..errors import ConfigError, Seq2SeqRMError
from ..io import atomic_write_text

logger = logging.getLogger(__name__)

WINNERS = ("A", "B", "tie", "invalid")
Item = tuple[Prompt, str, str]

#: The comparison prompt shared by :class:`HFJudge` and :class:`OpenAIJudge` (either takes
#: another with the same placeholders: ``prompt_template``, ``--judge-prompt FILE``). It asks for
#: one letter; the HF judge wraps it in the tokenizer's chat template (user turn + generation
#: prompt) so the very next token is the verdict.
JUDGE_PROMPT = (
    "You are comparing two responses to the same user request. Decide which response is better: "
    "more helpful, more correct and harmless, following the request.\n\n"
    "[User request]\n{prompt}\n\n"
    "[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}\n\n"
    "Which response is better? Answer with a single letter: A if Response A is better, "
    "B if Response B is better."
)
#: The placeholders of a judge prompt (see :func:`check_judge_prompt`).
PROMPT_FIELDS = ("prompt", "response_a", "response_b")
#: Extra instruction for API judges (their system message), which may also declare a tie.
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


def format_judge_prompt(prompt: Prompt, response_a: str, response_b: str, template: str | None = None) -> str:
    """The user message of the comparison: ``template`` (default :data:`JUDGE_PROMPT`) filled in."""
    return (template or JUDGE_PROMPT).format(prompt=prompt_text(prompt), response_a=response_a, response_b=response_b)


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

    Each item becomes :data:`JUDGE_PROMPT` (or ``prompt_template``) as a user turn of the tokenizer's chat template with
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
        prompt_template: str | None = None,
        dtype: str = "float32",
    ):
        import torch

        from ..models.loading import dtype_name, load_causal_lm, load_tokenizer

        self.name = f"hf:{model_dir}"
        self.batch_size, self.tie_margin = batch_size, tie_margin
        self.prompt_template = check_judge_prompt(prompt_template) if prompt_template is not None else JUDGE_PROMPT
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_dir, trust_remote_code=trust_remote_code, dtype=dtype)
        self.dtype = dtype_name(self.model.dtype)  # recorded in eval.json
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
        user = format_judge_prompt(prompt, response_a, response_b, self.prompt_template)
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
# In a longer reply the verdict letter must be a capital (a lower-case "a" is the article), and
# an adverb may stand before it: "the correct answer is indeed B".
_ADVERB = r"(?:(?:clearly|definitely|indeed|obviously|probably|certainly|actually|surely)\s+)?"
_EXPLICIT = (
    re.compile(r"\[\[\s*([ABab]|(?i:tie))\s*\]\]"),
    re.compile(
        r"(?i:\b(?:verdict|winner|final answer|better response|better answer|answer|choice)\s*(?:is)?\s*[:=]?\s*"
        + _ADVERB + r"(?:response\s+)?)(A|B|(?i:tie))\b"
    ),
    re.compile(
        r"(?i:\b(?:response|answer|output|assistant)\s+)(A|B)\b(?=(?i:\s+is\s+" + _ADVERB
        + r"(?:the\s+|a\s+)?(?:better|best|preferable|superior|more\s+helpful)|\s+wins))"
    ),
    re.compile(r"(?i:\b(?:choose|pick|prefer|select|go\s+with)\s+(?:response\s+|answer\s+|option\s+)?)(A|B)\b"),
    re.compile(r"\b(?:it'?s\s+a\s+(tie)|(?:both|they)\s+are\s+(equal)ly\s+good|(neither)\s+is\s+better)\b",
               re.IGNORECASE),
)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from a judge's reply, or None when it cannot be read unambiguously.

    Accepted: a short reply that is just the verdict, with any markdown or punctuation
    (``"A"``, ``"**B**"``, ``"Response A"``, ``"[[B]]"``, ``"Verdict: tie"``, ``"A is better."``),
    or a longer reply whose explicit verdict phrases all name the same answer: ``[[A]]``,
    ``"verdict: B"``, ``"the correct answer is indeed B"``, ``"Response A is better"``,
    ``"I would choose Response B"``, ``"it's a tie"``. In a longer reply the letter must be a
    capital. Anything else (empty, both letters claimed, prose with no verdict) is None, which
    the caller turns into an invalid judgement.
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


#: Separates an invalid verdict's reason from the reply it quotes (see :func:`most_common_error`).
REPLY_SEP = " \u2014 reply: "


def most_common_error(errors) -> tuple[str, int, str] | None:
    """``(reason, count, example)`` for the most frequent reason among ``errors`` (None entries
    skipped; an error quoting the judge's reply counts by its reason, without the reply), or None."""
    errors = [e for e in errors if e]
    if not errors:
        return None
    reasons = Counter(e.split(REPLY_SEP)[0] for e in errors)
    reason, count = reasons.most_common(1)[0]
    return reason, count, next(e for e in errors if e.split(REPLY_SEP)[0] == reason)


# --------------------------------------------------------------------------------------------- OpenAI

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Reply limit in tokens: room for a chat model that answers in a sentence ("The correct answer
#: is B."); a reply cut at the limit says so in its error.
DEFAULT_MAX_TOKENS = 128
#: How the reply limit is sent: "auto" sends ``max_tokens`` and switches to
#: ``max_completion_tokens`` when the server refuses the former (OpenAI's reasoning models).
TOKEN_PARAMS = ("auto", "max_tokens", "max_completion_tokens")
_RETRY_STATUS = (408, 409, 429)  # and every 5xx
_MAX_REPLY_BYTES = 8 << 20


class _Fatal(Exception):
    """A condition retrying cannot fix (wrong URL, key or model; nothing listening): stops the run."""


class _Stopped(Exception):
    """Another request hit a fatal condition: this one is not sent."""


class _RequestFailed(Exception):
    """One request failed for good: a 4xx other than 401/403/404 (``transient`` False), or its
    retries ran out (timeouts, 429, 5xx; ``transient`` True). The item becomes invalid."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def default_cache_dir() -> Path:
    root = os.environ.get("SEQ2SEQ_RM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "seq2seq_rm")
    return Path(root) / "judge"


def check_judge_prompt(template: str, source: str = "judge prompt") -> str:
    """``template`` when it is a usable judge prompt: ``str.format`` placeholders ``{prompt}``,
    ``{response_a}`` and ``{response_b}``, each at least once and no others (a literal brace is
    written ``{{`` or ``}}``); else a ConfigError naming ``source``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{source}: {e} (write a literal brace as {{{{ or }}}})") from None
    unknown = sorted({f"{{{f}}}" for f in fields if f not in PROMPT_FIELDS})
    missing = [f"{{{f}}}" for f in PROMPT_FIELDS if f not in fields]
    if unknown or missing:
        what = "; ".join(
            ([f"missing placeholder(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown placeholder(s) {', '.join(unknown)}"] if unknown else [])
        )
        raise ConfigError(
            f"{source}: {what}. A judge prompt holds {{prompt}}, {{response_a}} and {{response_b}} "
            "and no other placeholder (write a literal brace as {{ or }})"
        )
    return template


def load_prompt_file(path: str | os.PathLike, what: str = "--judge-prompt", check: bool = True) -> str:
    """The text of a prompt file (UTF-8), checked by :func:`check_judge_prompt` when ``check``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e})") from None
    return check_judge_prompt(text, f"{what} {path}") if check else text


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _proxy_for(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The proxy from ``{scheme}_proxy`` / ``no_proxy`` for ``host``; never one for a loopback host."""
    if _is_loopback(host):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


@dataclass
class _HTTPReply:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str


class OpenAIJudge:
    """An OpenAI-compatible chat-completions server as a pairwise judge.

    **Requests.** Each item is one ``POST {base_url}/chat/completions`` with body ``{"model",
    "messages": [system, user], "temperature": 0, "max_tokens": 128}``; the user message is
    ``prompt_template`` (default :data:`JUDGE_PROMPT`), the system message ``system_prompt``
    (default :data:`API_SYSTEM_PROMPT`; None for none). ``token_param="auto"`` sends
    ``max_tokens`` and, when the server refuses it (OpenAI's reasoning models want
    ``max_completion_tokens``), resends with ``max_completion_tokens`` and keeps doing so; a
    server that refuses ``temperature`` gets requests without it (``temperature=None`` sends
    none from the start). HTTP is the standard library's ``http.client``; ``http(s)_proxy`` /
    ``no_proxy`` are honoured except for loopback hosts.

    **Deadline and retries.** ``timeout`` bounds the whole of one attempt (connecting, sending,
    waiting and reading, a server that trickles bytes included): a watchdog closes the socket at
    the deadline. Timeouts, connection errors, 408/409/429 and 5xx are retried up to
    ``max_retries`` times with exponential backoff and jitter (``backoff * 2**attempt *
    U(0.5, 1.5)``, at most ``max_backoff`` s; ``Retry-After`` honoured up to the same cap);
    other 4xx make that item invalid without a retry.

    **Failing fast.** These raise :class:`Seq2SeqRMError` from :meth:`judge` and cancel the
    requests not yet sent: 401/403 (key), 404 (wrong URL, with a hint when ``/v1`` is missing),
    an unknown model (a 404 or 400 saying so; the error lists the models the server serves),
    a TLS error, a connection that still fails (refused, no such host) after the retries, and
    ``max_failures_in_a_row`` items in a row whose requests failed (retries run out; before the
    first success also other 4xx). The first request to a server goes alone, so a wrong URL,
    key or model costs one request, not ``concurrency`` of them.

    **Both orders, concurrently.** The win-rate protocol asks for both orders of every pair in
    one call, so with ``concurrency`` > 1 they are in flight together.

    **Cache.** Replies (readable or not) are cached under ``cache_dir`` keyed by the sha256 of
    the endpoint (``base_url`` without credentials) and the request body as configured (model,
    messages, temperature, reply limit; never the key), written atomically: a rerun against the
    same endpoint sends no request, another endpoint with the same model name gets its own
    verdicts. Failed requests are not cached.

    **The key** is read from ``api_key_env`` (``None`` or ``""`` for servers that need none),
    sent only in the ``Authorization`` header and replaced by ``***`` in every reply, error,
    log line and cache entry, also when a server echoes it in a successful reply.
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = "OPENAI_API_KEY",
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        token_param: str = "auto",
        temperature: float | None = 0.0,
        prompt_template: str | None = None,
        system_prompt: str | None = API_SYSTEM_PROMPT,
        max_failures_in_a_row: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        seed: int | None = None,
    ):
        if not model:
            raise ConfigError("openai judge: a model name is required (openai:MODEL)")
        _check_number("timeout", timeout, "--timeout", low=0, strict=True)
        _check_number("max_retries", max_retries, "--max-retries", low=0, integer=True)
        _check_number("concurrency", concurrency, "--concurrency", low=1, integer=True)
        _check_number("max_tokens", max_tokens, "--max-tokens", low=1, integer=True)
        _check_number("max_failures_in_a_row", max_failures_in_a_row, None, low=1, integer=True)
        _check_number("backoff", backoff, None, low=0)
        _check_number("max_backoff", max_backoff, None, low=0)
        if temperature is not None:
            _check_number("temperature", temperature, "--temperature", low=0)
        if token_param not in TOKEN_PARAMS:
            raise ConfigError(f"token_param (--token-param) must be one of {', '.join(TOKEN_PARAMS)}, got {token_param!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        url = urllib.parse.urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"the judge's base URL must be http(s)://HOST[:PORT]/PATH, got {self._redact_url(base_url)!r}")
        try:
            self._port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError as e:
            raise ConfigError(f"the judge's base URL {self._redact_url(base_url)!r}: {e}") from None
        self._scheme, self._host, self._path = url.scheme, url.hostname, url.path.rstrip("/")
        self._query = f"?{url.query}" if url.query else ""
        #: what the cache is keyed by and errors name: the base URL without credentials
        self.endpoint = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{self._path}{self._query}"
        self.base_url = self.endpoint  # credentials in the URL are not used, and not kept
        self._proxy = _proxy_for(url.scheme, url.hostname)
        self._proxy_headers: dict[str, str] = {}
        if self._proxy is not None and self._proxy.username is not None:
            cred = f"{urllib.parse.unquote(self._proxy.username)}:{urllib.parse.unquote(self._proxy.password or '')}"
            self._proxy_headers = {"Proxy-Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}
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
        self.timeout, self.max_retries, self.concurrency = float(timeout), int(max_retries), int(concurrency)
        self.max_tokens, self.token_param, self.temperature = int(max_tokens), token_param, temperature
        self.prompt_template = check_judge_prompt(prompt_template) if prompt_template is not None else JUDGE_PROMPT
        self.system_prompt = system_prompt or None
        self.max_failures_in_a_row = int(max_failures_in_a_row)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._use_completion_tokens = token_param == "max_completion_tokens"
        self._send_temperature = temperature is not None
        self._answered = False  # the server has answered an HTTP request
        self._succeeded = False  # ... with a chat completion
        self._failures_in_a_row = 0
        self.requests_sent = 0
        self.cache_hits = 0

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.endpoint!r}, api_key_env={self.api_key_env!r})"

    # -- request pieces

    def request_body(self, prompt: Prompt, response_a: str, response_b: str) -> dict:
        """The request as configured (before any adaptation to the server); also the cache key's body."""
        messages = [{"role": "user", "content": format_judge_prompt(prompt, response_a, response_b, self.prompt_template)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body: dict = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body["max_completion_tokens" if self.token_param == "max_completion_tokens" else "max_tokens"] = self.max_tokens
        return body

    def cache_key(self, body: dict) -> str:
        """sha256 of the endpoint and the configured request body (the key is in neither)."""
        canon = json.dumps({"endpoint": self.endpoint, "request": body}, sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _redact(self, text: str) -> str:
        if self._key and self._key in text:
            text = text.replace(self._key, "***")
        return text

    @staticmethod
    def _redact_url(url: str) -> str:
        u = urllib.parse.urlsplit(url)
        if u.username is None and u.password is None:
            return url
        return urllib.parse.urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2]))

    def _wire(self, body: dict) -> dict:
        """The body as sent now: with the adaptations the server asked for."""
        wire = dict(body)
        if self._use_completion_tokens and "max_tokens" in wire:
            wire["max_completion_tokens"] = wire.pop("max_tokens")
        if not self._send_temperature:
            wire.pop("temperature", None)
        return wire

    def _sleep_for(self, attempt: int, headers: dict[str, str]) -> float:
        with self._lock:
            jitter = 0.5 + self._rng.random()
        delay = min(self.max_backoff, self.backoff * (2**attempt)) * jitter
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                return max(delay, min(self.max_backoff, float(headers[name]) * scale))
            except (KeyError, ValueError):
                pass
        return delay

    # -- HTTP

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        """A connection to the server, or to its proxy (a CONNECT tunnel for https)."""
        proxy = self._proxy
        if self._scheme == "https":
            ctx = ssl.create_default_context()
            if proxy is None:
                return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=ctx)
            conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 80, timeout=timeout, context=ctx)
            conn.set_tunnel(self._host, self._port, headers=self._proxy_headers)
            return conn
        if proxy is None:
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(proxy.hostname, proxy.port or 80, timeout=timeout)

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict, timeout: float) -> _HTTPReply:
        """One HTTP exchange with ``{base path}{path}`` that ends within ``timeout`` s, whatever the
        server does: a watchdog shuts the socket down at the deadline (a socket timeout alone is
        per read, and a server sending a byte now and then would hold the request far longer)."""
        conn = self._connection(timeout)
        target = self._path + path + self._query
        if self._proxy is not None and self._scheme == "http":  # a plain-HTTP proxy takes the absolute URL
            target = f"http://{self._host}:{self._port}{target}"
            headers = {**headers, **self._proxy_headers}
        fired = threading.Event()

        def expire():
            fired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()  # bounded by the socket timeout; the watchdog covers everything after it
            if fired.is_set():
                raise TimeoutError
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read(_MAX_REPLY_BYTES + 1)
            status, reply_headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        except Exception:
            if fired.is_set():
                raise TimeoutError(f"no complete reply within {timeout:g} s") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if fired.is_set():
            raise TimeoutError(f"no complete reply within {timeout:g} s")
        if len(payload) > _MAX_REPLY_BYTES:
            raise http.client.HTTPException(f"reply larger than {_MAX_REPLY_BYTES >> 20} MiB")
        return _HTTPReply(status, reply_headers, payload.decode("utf-8", errors="replace"))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "seq2seq-rm"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _send(self, body: dict) -> tuple[str, str | None, dict]:
        """(reply text, finish_reason, body as sent) of one item, retrying transient failures and
        adapting to a server that refuses ``max_tokens`` or ``temperature``; raises _Fatal,
        _Stopped or _RequestFailed."""
        url = f"{self.endpoint}/chat/completions"
        attempt = adaptations = 0
        while True:
            if self._stop.is_set():
                raise _Stopped
            wire = self._wire(body)
            data = json.dumps(wire, ensure_ascii=False).encode("utf-8")
            reply_headers: dict[str, str] = {}
            with self._lock:
                self.requests_sent += 1
            try:
                r = self._exchange("POST", "/chat/completions", data, self._headers(), self.timeout)
            except TimeoutError:
                last, connect_failed = f"no complete reply within {self.timeout:g} s (the timeout)", False
            except ssl.SSLError as e:
                raise _Fatal(
                    f"TLS error talking to {self.endpoint}: {self._redact(str(e))}. Does the server speak "
                    f"{'https' if self._scheme == 'https' else 'http'}? Check --base-url"
                ) from None
            except (ConnectionRefusedError, socket.gaierror) as e:
                why = "connection refused" if isinstance(e, ConnectionRefusedError) else f"cannot resolve the host {self._host!r}"
                last, connect_failed = why, True
            except (OSError, http.client.HTTPException) as e:
                last, connect_failed = f"connection failed: {type(e).__name__}: {self._redact(str(e))}", False
                if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                    connect_failed = True
            else:
                with self._lock:
                    self._answered = True
                if r.status == 200:
                    try:
                        text, finish = _reply_text(r.text)
                    except ValueError as e:
                        raise _RequestFailed(self._redact(str(e)), transient=False) from None
                    return self._redact(text), finish, wire
                detail, err = _error_info(r.text)
                detail = self._redact(detail)
                fatal = self._fatal_message(r.status, detail, err, url)
                if fatal:
                    raise _Fatal(fatal)
                if r.status == 400 and adaptations < 2 and self._adapt(wire, detail, err):
                    adaptations += 1
                    continue
                last = f"HTTP {r.status}: {detail}"
                if r.status not in _RETRY_STATUS and r.status < 500:
                    raise _RequestFailed(last, transient=False)
                reply_headers, connect_failed = r.headers, False
            if attempt >= self.max_retries:
                if connect_failed:
                    raise _Fatal(
                        f"cannot reach {self.endpoint}: {last} (after {attempt + 1} attempt(s)). Is the server "
                        "running, and is --base-url right?"
                    )
                raise _RequestFailed(f"gave up after {attempt + 1} attempts: {last}", transient=True)
            delay = self._sleep_for(attempt, reply_headers)
            logger.warning("%s: %s; retry %d/%d in %.2f s", self.name, last, attempt + 1, self.max_retries, delay)
            if self._stop.wait(delay):
                raise _Stopped
            attempt += 1

    def _adapt(self, sent: dict, detail: str, err: dict) -> bool:
        """Whether a 400 refuses a parameter this judge can send otherwise (then it does from now on)."""
        param, msg = str(err.get("param") or ""), detail.lower()
        refused = re.search(r"unsupported|not supported|does not support|only the default", msg)
        if (
            "max_tokens" in sent and self.token_param == "auto"
            and (param == "max_tokens" or ("max_tokens" in msg and "max_completion_tokens" in msg))
        ):
            with self._lock:
                if not self._use_completion_tokens:
                    logger.warning("%s: the server refuses max_tokens (%s); sending max_completion_tokens instead",
                                   self.name, detail)
                self._use_completion_tokens = True
            return True
        if "temperature" in sent and (param == "temperature" or ("temperature" in msg and refused)):
            with self._lock:
                if self._send_temperature:
                    logger.warning("%s: the model refuses temperature=%g (%s); sending requests without it "
                                   "(the model's default applies)", self.name, self.temperature, detail)
                self._send_temperature = False
            return True
        return False

    def _fatal_message(self, status: int, detail: str, err: dict, url: str) -> str | None:
        """The error that stops the run for this HTTP status, or None when the item may go on."""
        if status == 401:
            how = (f"check the API key in ${self.api_key_env}" if self._key else
                   "the server wants an API key: name the variable that holds it with --api-key-env")
            return f"{url} answered HTTP 401 (unauthorized): {detail}. {how[0].upper()}{how[1:]}"
        if status == 403:
            return f"{url} answered HTTP 403 (forbidden): {detail}. The API key has no access to this model or endpoint"
        if status in (400, 404) and _unknown_model(detail, err):
            served = self._served_models()
            listed = f" It serves: {', '.join(served)}" if served else ""
            return (f"the server at {self.endpoint} does not serve the model {self.model!r} (HTTP {status}: "
                    f"{detail}).{listed}")
        if status == 404:
            if re.search(r"/v\d+[a-z]*$", self._path):
                hint = "Check --base-url"
            else:
                hint = (f"The base URL of an OpenAI-compatible server usually ends in /v1: try --base-url "
                        f"{self.endpoint}/v1")
            return f"{url} answered HTTP 404 (not found): {detail}. {hint}"
        return None

    def _served_models(self) -> list[str]:
        """Model ids from ``GET {base_url}/models`` (best effort, for an error message)."""
        try:
            r = self._exchange("GET", "/models", None, self._headers(), min(self.timeout, 10.0))
            ids = [m["id"] for m in json.loads(r.text)["data"] if isinstance(m, dict) and "id" in m]
        except Exception:  # a nicety of an error message
            return []
        return [self._redact(str(i)) for i in ids[:10]] + (["..."] if len(ids) > 10 else [])

    # -- judging

    def _read_cache(self, key: str) -> Judgement | None:
        path = self._cache_path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            reply, finish = entry["reply"], entry.get("finish_reason")
            if not isinstance(reply, str):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged cache entry is simply asked again
        return self._verdict(reply, finish)

    def _verdict(self, reply: str, finish: str | None) -> Judgement:
        verdict = parse_verdict(reply)
        if verdict is not None:
            return Judgement(verdict, reply, None)
        why = "could not read a verdict (A, B or tie) from the reply"
        if finish == "length":
            why += (f"; the reply hit its length limit (finish_reason 'length' at {self.max_tokens} tokens): "
                    "raise --max-tokens")
        return Judgement("invalid", reply, f"{why}{REPLY_SEP}{reply!r:.200}")

    def _judge_request(self, key: str, body: dict) -> Judgement:
        try:
            reply, finish, wire = self._send(body)
        except _RequestFailed as e:
            with self._lock:
                if e.transient or not self._succeeded:
                    self._failures_in_a_row += 1
                n = self._failures_in_a_row
            if n >= self.max_failures_in_a_row:
                raise _Fatal(f"stopped after {n} requests in a row failed; the last: {e}") from None
            return Judgement("invalid", None, str(e))
        with self._lock:
            self._succeeded, self._failures_in_a_row = True, 0
        entry = {"key": key, "endpoint": self.endpoint, "request": body, "sent": wire, "reply": reply,
                 "finish_reason": finish, "created": time.time()}
        text = self._redact(json.dumps(entry, ensure_ascii=False, indent=1)) + "\n"
        atomic_write_text(self._cache_path(key), text)
        return self._verdict(reply, finish)

    def _run(self, todo: list[str], jobs: dict[str, dict], results: dict[str, Judgement]) -> None:
        if todo and not self._answered:  # the first request goes alone: a wrong URL, key or model costs one
            key = todo.pop(0)
            results[key] = self._judge_request(key, jobs[key])
        if self.concurrency == 1 or len(todo) <= 1:
            for key in todo:
                results[key] = self._judge_request(key, jobs[key])
            return
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
        futures = {pool.submit(self._judge_request, key, jobs[key]): key for key in todo}
        try:
            for f in as_completed(futures):
                results[futures[f]] = f.result()
        except BaseException:
            self._stop.set()  # in-flight requests finish (within the timeout); queued ones are not sent
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def judge(self, items: list[Item]) -> list[Judgement]:
        sent, hits = self.requests_sent, self.cache_hits
        self._stop.clear()
        keys, jobs = [], {}
        for prompt, a, b in items:
            body = self.request_body(prompt, a, b)
            keys.append(self.cache_key(body))
            jobs.setdefault(keys[-1], body)
        results: dict[str, Judgement] = {}
        for key in jobs:
            if (cached := self._read_cache(key)) is not None:
                results[key] = cached
                self.cache_hits += 1
        try:
            self._run([k for k in jobs if k not in results], jobs, results)
        except _Fatal as e:
            done = " Verdicts received so far are cached; a rerun starts from them." if self._succeeded else ""
            raise Seq2SeqRMError(f"{self.name}: {str(e).rstrip('.')}.{done}") from None
        logger.info("%s: %d items, %d from the cache, %d requests sent",
                    self.name, len(items), self.cache_hits - hits, self.requests_sent - sent)
        return [results[k] for k in keys]


def _check_number(name: str, value, flag: str | None, low: float, strict: bool = False, integer: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"greater than {low:g}" if strict else f"at least {low:g}"
        raise ConfigError(f"{name}{f' ({flag})' if flag else ''} must be {kind} {bound}, got {value!r}")


_UNKNOWN_MODEL = re.compile(
    r"model_not_found|\bmodel\b.{0,160}?\b(?:does not exist|not found|is not served|unknown)\b"
    r"|\b(?:unknown|invalid|no such)\s+model\b",
    re.IGNORECASE | re.DOTALL,
)


def _unknown_model(detail: str, err: dict) -> bool:
    """Whether an error says the model does not exist: OpenAI's code ``model_not_found``, vLLM's
    "The model `x` does not exist.", Ollama's 'model "x" not found'."""
    return err.get("code") == "model_not_found" or bool(_UNKNOWN_MODEL.search(detail))


def _error_info(body: str) -> tuple[str, dict]:
    """(message, error object) of an error response: ``{"error": {...}}`` (OpenAI, vLLM),
    ``{"message": ...}`` (older vLLM), ``{"detail": ...}`` (FastAPI) or plain text."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    err: dict = {}
    if isinstance(obj, dict):
        e = obj.get("error")
        if isinstance(e, dict):
            err = e
        elif isinstance(e, str):
            err = {"message": e}
        elif "message" in obj:
            err = obj
        elif "detail" in obj:
            d = obj["detail"]
            err = {"message": d if isinstance(d, str) else json.dumps(d)}
    msg = err.get("message")
    msg = msg if isinstance(msg, str) and msg.strip() else " ".join(body.split())
    return (msg.strip() or "(empty body)")[:300], err


def _reply_text(payload: str) -> tuple[str, str | None]:
    """(text, finish_reason) of a chat-completions response."""
    try:
        obj = json.loads(payload)
        choice = obj["choices"][0]
        content = choice["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(f"not a chat-completions response: {payload[:200]!r}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    finish = choice.get("finish_reason")
    return ("" if content is None else str(content)), (finish if isinstance(finish, str) else None)


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
        return OpenAIJudge(arg, base_url or DEFAULT_BASE_URL, **kw)
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
