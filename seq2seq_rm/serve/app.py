"""The reward server: either kind of RM over HTTP (FastAPI + uvicorn), with dynamic batching.

``seq2seq-rm serve --rm DIR`` loads the RM folder, and :func:`create_app` builds the app around
one :class:`~seq2seq_rm.serve.batching.DynamicBatcher`: every request row becomes one batch
item, rows of concurrent requests share forward passes, and each forward pass is
:func:`score_rows` in a worker thread.

Endpoints (every answer is JSON; every error is ``{"error": "<what is wrong>"}``):

``POST /token_rewards``
    ``{"prompts": [P, ...], "responses": ["text", ...]}`` or ``{"prompts": [...],
    "response_ids": [[id, ...], ...]}``. A prompt is a string or a list of chat messages
    (``{"role", "content"}``), checked by the same code that reads ``rm score``'s rows
    (``data.adapters.validate_prompt``). A response text is encoded as ``rm score`` encodes it
    (``R(y)``: its tokens and EOS, ``data.templates.encode_response``); response ids are
    scored as given (a policy's sampled ids, with or without a final EOS). Answer::

        {"rewards":       [[float] * T_b for each row],  # one per response token, as `rm score`
         "tokens":        [[str] * T_b],    # each response token as text (`rm score`'s "tokens")
         "token_ids":     [[int] * T_b],
         "predicted":     [[str] * T_b] | null,  # seq2seq: the RM's own token at each position
         "predicted_ids": [[int] * T_b] | null,  # (`rm score`'s "rm_tokens"); null for a scalar RM
         "scores":        [float],          # the RM's sequence score of each row (see below)
         "kind": "seq2seq" | "scalar"}

    ``T_b`` is row b's number of response tokens in the RM's tokenizer. For the same rows the
    rewards equal ``rm score``'s (both call ``RewardModel.token_rewards`` on right-padded
    ``R(y)``; a different batch composition changes float32 results only by rounding, ~1e-6).

``POST /get_reward``
    OpenRLHF's remote reward model protocol (its ``--reward.remote_url`` flag, formerly
    ``--remote_rm_url``), as in OpenRLHF 0.11.0 (commit 3c3be62, Aug 2026):
    ``openrlhf/utils/agent.py``, ``SingleTurnAgentExecutor._fetch_rewards_via_http`` posts
    ``{"query": [str], "prompts": [str], "labels": [any]}``, one entry per sample, where
    ``query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`` (the
    policy's prompt as it was fed to vLLM, chat template applied when OpenRLHF runs with
    ``--data.apply_chat_template``, followed by the sampled response, its EOS token as text)
    and ``prompts`` are those prompt texts; it reads ``rewards`` (and ``scores``,
    ``extra_logs``) from the answer, the shape of ``openrlhf/cli/serve_rm.py``'s
    ``/get_reward``. (Older OpenRLHF, ``openrlhf/utils/remote_rm_utils.py``, posts the same
    three keys.) Here:

    * the response is ``query[len(prompt):]`` (a query that does not start with its prompt,
      e.g. one whose prompt OpenRLHF cut from the left, is refused with 422);
    * a response ending in the RM tokenizer's EOS text is a finished one: the text before it
      is encoded as ``rm score`` does (tokens + EOS id); without it (a truncated response) its
      tokens are scored without EOS;
    * the prompt text is given to the RM as the prompt, laid out with the RM's own template.
      Run OpenRLHF without ``--data.apply_chat_template`` so that it is the raw prompt; with
      it the RM sees the policy's chat markup inside its prompt;
    * ``labels`` are accepted and ignored.

    Answer: ``{"rewards": [float], "scores": [float], "extra_logs": {}}``, one sequence score
    per query (``scores`` = ``rewards``, as OpenRLHF's own server does).

``GET /health``
    ``{"status": "ok", "kind", "rm", "max_length", "limits", "stats"}``; ``stats`` are the
    batcher's counters (forward passes, rows computed, cancelled, failed, queued, ...).

The sequence score is the one ``rm eval`` reports as its headline: ``extraction.sequence_score``
of the seq2seq RM's folder (mean token reward by default), the score itself for a scalar RM.

Errors: 400 malformed JSON; 401 missing or wrong API key; 404/405 unknown path or method;
413 body or row count over the limits; 422 a request that does not fit the schema (an unknown
field, a wrong type, lists of different lengths, an empty response, a token id outside the
vocabulary, a row longer than the RM's window); 503 the queue is full; 500 the RM failed on
a row (the server goes on: the batch's other rows are run again alone).

Security: the server binds 127.0.0.1 unless ``--host`` says otherwise. With an API key every
request, ``/health`` included, must carry ``Authorization: Bearer <key>``; the key is compared
with ``hmac.compare_digest`` and never logged or echoed. Bodies (``max_body_bytes``), rows per
request, the queue, connections and batches are bounded (:class:`ServeConfig`). A request
whose client disconnects is cancelled: its rows still waiting are skipped, and nobody waits
on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..data.adapters import RowContext, validate_prompt
from ..data.records import Prompt
from ..data.templates import encode_response, encode_text, render_prompt
from ..errors import ConfigError, DataError, Seq2SeqRMError
from ..layout import fit_to_length, right_pad
from ..rewards.views import token_strings
from .batching import BatchLimits, DynamicBatcher, QueueFull
from .config import ServeConfig

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One response to score: its prompt, its response ids (T,), and ``tokens``, the length of
    its row in the RM's forward pass (source or prompt, after the RM's own truncation, plus T)."""

    prompt: Prompt
    response_ids: list[int]
    tokens: int


@dataclass
class RowResult:
    """What one forward pass gives for one row: ``rewards`` (T,), and for the seq2seq RM the
    token it would have written at each position, ``predicted_ids`` (T,); ``score``: the RM's
    sequence score of the row."""

    rewards: list[float]
    predicted_ids: list[int] | None
    score: float


def sequence_score_name(rm) -> str:
    """The sequence score ``rm eval`` reports as its headline: the RM folder's
    ``extraction.sequence_score`` for a seq2seq RM, ``sum`` (the score itself) for a scalar RM."""
    return rm.extraction.sequence_score if rm.kind == "seq2seq" else "sum"


def score_rows(rm, rows: list[Row]) -> list[RowResult]:
    """One forward pass of the RM over ``rows``: the response ids are right-padded to (B, T)
    (``layout.right_pad``, as ``rm score`` does) and given to ``rm.token_rewards``."""
    ids, mask = right_pad([r.response_ids for r in rows], rm.pad_id)  # (B, T), (B, T)
    tr = rm.token_rewards([r.prompt for r in rows], ids, mask)  # rewards (B, T)
    scores = tr.sequence_scores(sequence_score_name(rm))  # (B,)
    out = []
    for b, row in enumerate(rows):
        n = len(row.response_ids)
        pred = tr.predicted_ids[b, :n].tolist() if tr.predicted_ids is not None else None
        out.append(RowResult(rewards=tr.rewards[b, :n].float().tolist(), predicted_ids=pred, score=float(scores[b])))
    return out


def row_tokens(rm, prompt: Prompt, response_ids: list[int]) -> int:
    """The length of this row in the RM's forward pass: the seq2seq RM's source ``S(x, y)`` (the
    response text decoded from the ids, as ``token_rewards`` does) or the scalar RM's prompt
    ``P(x)``, cut from the left as the RM cuts it (``layout.fit_to_length``), plus the response.
    Raises ``ApiError`` 422 when the row cannot fit the RM's window (``token_rewards`` would refuse it)."""
    n = len(response_ids)
    if rm.kind == "seq2seq":
        text = rm.tokenizer.decode(response_ids, skip_special_tokens=True)
        prefix = rm.sources([prompt], [text])[0]
    else:
        prefix = encode_text(render_prompt(prompt, rm.template, rm.tokenizer, rm.style), rm.tokenizer, rm.style)
    prefix, _, _ = fit_to_length(prefix, [0] * n, rm.max_length, "truncate")
    if len(prefix) + n > rm.max_length:
        raise ApiError(422, f"a response of {n} tokens is too long for the reward model's {rm.max_length}-token "
                            f"window (with at least {len(prefix)} tokens of prompt)")
    return len(prefix) + n


# ------------------------------------------------------------------------------------ request bodies


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class TokenRewardsRequest(BaseModel):
    """``POST /token_rewards``: prompts with response texts or response token ids."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[Any]
    responses: list[StrictStr] | None = None
    response_ids: list[list[StrictInt]] | None = None


class OpenRLHFRequest(BaseModel):
    """``POST /get_reward``: OpenRLHF's remote RM request (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    query: list[StrictStr]
    prompts: list[StrictStr]
    labels: list[Any] | None = None


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(e: ValidationError, model: type[BaseModel]) -> str:
    """One line naming each problem's field (at most 5), e.g. ``unknown field 'foo'``."""
    parts = []
    for err in e.errors()[:5]:
        where = _where(err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}' (fields: {', '.join(model.model_fields)})")
        elif err["type"] == "missing":
            parts.append(f"missing field '{where}'")
        else:
            parts.append(f"field '{where}': {err['msg']}")
    more = len(e.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_body(data: Any, model: type[BaseModel]):
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object with the fields {', '.join(model.model_fields)}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, validation_message(e, model)) from None


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, read at most ``limit`` bytes far (413 past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {int(declared)} bytes; the limit is {limit} (--max-body-bytes)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is over the limit of {limit} bytes (--max-body-bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(499, "the client closed the connection") from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None


def _check_count(n: int, cfg: ServeConfig) -> None:
    if n == 0:
        raise ApiError(422, "no rows: 'prompts' is empty")
    if n > cfg.max_request_rows:
        raise ApiError(413, f"{n} rows in one request; the limit is {cfg.max_request_rows} (--max-request-rows)")


def _prompt(value: Any, i: int) -> Prompt:
    try:
        prompt = validate_prompt(value, RowContext("request", None), f"prompts[{i}]")
    except DataError as e:
        raise ApiError(422, f"field '{e.field}': {e.reason}") from None
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    if not any(t.strip() for t in texts):
        raise ApiError(422, f"field 'prompts[{i}]': empty prompt")
    return prompt


def token_rewards_rows(rm, req: TokenRewardsRequest, cfg: ServeConfig, vocab: int) -> list[Row]:
    """The rows of a ``/token_rewards`` request, checked (422/413 with the field named)."""
    if (req.responses is None) == (req.response_ids is None):
        raise ApiError(422, "give exactly one of 'responses' (texts) and 'response_ids' (token ids)")
    given = req.responses if req.responses is not None else req.response_ids
    name = "responses" if req.responses is not None else "response_ids"
    if len(given) != len(req.prompts):
        raise ApiError(422, f"{len(req.prompts)} prompts but {len(given)} {name}: one response per prompt")
    _check_count(len(req.prompts), cfg)
    rows = []
    for i, value in enumerate(req.prompts):
        prompt = _prompt(value, i)
        if req.responses is not None:
            if not req.responses[i].strip():
                raise ApiError(422, f"field 'responses[{i}]': empty response")
            ids = encode_response(req.responses[i], rm.tokenizer)
        else:
            ids = req.response_ids[i]
            if not ids:
                raise ApiError(422, f"field 'response_ids[{i}]': empty response")
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(422, f"field 'response_ids[{i}]': token id {bad} is outside the vocabulary (0..{vocab - 1})")
        try:
            rows.append(Row(prompt, ids, row_tokens(rm, prompt, ids)))
        except ApiError as e:
            raise ApiError(e.status, f"row {i}: {e.message}") from None
    return rows


def openrlhf_rows(rm, req: OpenRLHFRequest, cfg: ServeConfig) -> list[Row]:
    """The rows of an OpenRLHF ``/get_reward`` request: each query split after its prompt."""
    if len(req.query) != len(req.prompts) or (req.labels is not None and len(req.labels) != len(req.query)):
        lab = "" if req.labels is None else f", {len(req.labels)} labels"
        raise ApiError(422, f"{len(req.query)} queries, {len(req.prompts)} prompts{lab}: one of each per sample")
    _check_count(len(req.query), cfg)
    eos = rm.tokenizer.eos_token
    rows = []
    for i, (query, prompt_text) in enumerate(zip(req.query, req.prompts, strict=True)):
        if not query.startswith(prompt_text):
            raise ApiError(422, f"query[{i}] does not start with prompts[{i}]: cannot tell the response from "
                                "the prompt (was the prompt truncated?)")
        prompt = _prompt(prompt_text, i)
        text = query[len(prompt_text):]
        finished = bool(eos) and text.endswith(eos)
        body = text[: -len(eos)] if finished else text
        if not body.strip():
            raise ApiError(422, f"query[{i}]: empty response")
        ids = encode_response(body, rm.tokenizer) if finished else rm.tokenizer(body, add_special_tokens=False).input_ids
        try:
            rows.append(Row(prompt, ids, row_tokens(rm, prompt, ids)))
        except ApiError as e:
            raise ApiError(e.status, f"query[{i}]: {e.message}") from None
    return rows


# --------------------------------------------------------------------------------------- the app


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <key>`` (401 otherwise).

    The comparison is ``hmac.compare_digest`` (its time does not depend on where the keys
    differ); the key is never logged or put into an answer."""

    def __init__(self, app, key: str):
        self.app, self._key = app, key.encode("utf-8")

    def __repr__(self) -> str:  # no key in reprs
        return "BearerAuth(<key>)"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        value = b""
        for name, v in scope.get("headers", []):
            if name.lower() == b"authorization":
                value = v
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # the app has none; refused all the same
            return await send({"type": "websocket.close", "code": 1008})
        response = JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not expected once the body is read; never spin


async def run_rows(request: Request, batcher: DynamicBatcher, rows: list[Row]) -> list[RowResult]:
    """Queue the rows and wait for their results, or for the client to go away (then the rows
    still queued are cancelled: the batcher skips them)."""
    try:
        futures = batcher.submit(rows, [r.tokens for r in rows])
    except QueueFull as e:
        raise ApiError(503, f"{e}; retry later") from None
    everything = asyncio.gather(*futures)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({everything, gone}, return_when=asyncio.FIRST_COMPLETED)
        if everything not in done:
            raise ApiError(499, "the client closed the connection")
        try:
            return everything.result()
        except Seq2SeqRMError as e:  # a row the RM itself refuses (e.g. over-long): the caller's to fix
            raise ApiError(422, str(e)) from None
        except Exception as e:
            log.error("the reward model failed on a batch: %s: %s", type(e).__name__, e)
            raise ApiError(500, f"the reward model failed: {type(e).__name__}: {e}") from None
    finally:
        gone.cancel()
        everything.cancel()
        for f in futures:
            if f.done() and not f.cancelled():
                f.exception()  # retrieved: no "exception was never retrieved" noise
            else:
                f.cancel()


def create_app(rm, cfg: ServeConfig, api_key: str | None = None,
               score_fn: Callable[[Any, list[Row]], list[RowResult]] = score_rows) -> FastAPI:
    """The FastAPI app serving ``rm`` (a loaded ``RewardModel``). ``score_fn(rm, rows)`` is the
    forward pass of one batch (tests wrap :func:`score_rows` to slow it down or make it fail).
    The batcher starts and stops with the app (its lifespan)."""
    if cfg.max_batch_tokens < rm.max_length:
        raise ConfigError(f"max_batch_tokens ({cfg.max_batch_tokens}) must be at least the reward model's window "
                          f"({rm.max_length} tokens): a row of that length must fit a batch")
    limits = BatchLimits(max_batch_size=cfg.max_batch_size, max_batch_tokens=cfg.max_batch_tokens,
                         max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue_rows)
    batcher = DynamicBatcher(functools.partial(score_fn, rm), limits)
    # a served RM (rm_server) has no local model: its vocabulary is the tokenizer's
    vocab = rm.model.get_input_embeddings().num_embeddings if rm.model is not None else len(rm.tokenizer)
    texts = TokenTexts(rm.tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="seq2seq-rm reward server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.rm, app.state.batcher, app.state.cfg = rm, batcher, cfg
    if api_key is not None:
        app.add_middleware(BearerAuth, key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "kind": rm.kind, "rm": cfg.rm, "max_length": rm.max_length,
                "sequence_score": sequence_score_name(rm),
                "limits": {"max_batch_size": cfg.max_batch_size, "max_batch_tokens": cfg.max_batch_tokens,
                           "max_wait_ms": cfg.max_wait_ms, "max_request_rows": cfg.max_request_rows,
                           "max_queue_rows": cfg.max_queue_rows, "max_body_bytes": cfg.max_body_bytes},
                "stats": batcher.snapshot()}

    # Rows are prepared (tokenised) in threads while the batcher's thread runs the RM: the tokenizer is
    # only ever called without truncation or padding, so no call changes its state under another.
    @app.post("/token_rewards")
    async def token_rewards(request: Request):
        req = parse_body(await read_json(request, cfg.max_body_bytes), TokenRewardsRequest)
        rows = await asyncio.to_thread(token_rewards_rows, rm, req, cfg, vocab)
        results = await run_rows(request, batcher, rows)
        # A JSONResponse as it is: FastAPI's jsonable_encoder walk costs more than json.dumps on these lists.
        return JSONResponse(await asyncio.to_thread(_token_rewards_answer, rm, texts, rows, results))

    @app.post("/get_reward")
    async def get_reward(request: Request):
        req = parse_body(await read_json(request, cfg.max_body_bytes), OpenRLHFRequest)
        rows = await asyncio.to_thread(openrlhf_rows, rm, req, cfg)
        scores = [r.score for r in await run_rows(request, batcher, rows)]
        return JSONResponse({"rewards": scores, "scores": scores, "extra_logs": {}})

    return app


class TokenTexts:
    """Each token id as text, exactly as ``rm score`` shows it (``views.token_strings``: one
    ``decode([id])`` per token), remembered per id: decoding token by token costs more than the
    forward pass of a small RM."""

    def __init__(self, tokenizer):
        self.tokenizer, self._cache = tokenizer, {}

    def __call__(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            text = self._cache.get(i)
            if text is None:
                text = self._cache[i] = token_strings(self.tokenizer, [i])[0]
            out.append(text)
        return out


def _token_rewards_answer(rm, texts: TokenTexts, rows: list[Row], results: list[RowResult]) -> dict:
    seq2seq = rm.kind == "seq2seq"
    return {
        "kind": rm.kind,
        "rewards": [r.rewards for r in results],
        "tokens": [texts(row.response_ids) for row in rows],
        "token_ids": [row.response_ids for row in rows],
        "predicted": [texts(r.predicted_ids) for r in results] if seq2seq else None,
        "predicted_ids": [r.predicted_ids for r in results] if seq2seq else None,
        "scores": [r.score for r in results],
    }


# ------------------------------------------------------------------------------------- running it


def read_api_key(env: str | None) -> str | None:
    """The API key from the environment variable ``env`` (None: no key). Refuses an unset or empty one."""
    if env is None:
        return None
    key = os.environ.get(env, "")
    if not key.strip():
        raise ConfigError(f"--api-key-env {env}: the environment variable {env} is unset or empty; "
                          "set it to the API key clients must send, or leave out --api-key-env")
    return key.strip()


def uvicorn_config(app, cfg: ServeConfig, host: str | None = None, port: int | None = None):
    import uvicorn

    return uvicorn.Config(app, host=host or cfg.host, port=cfg.port if port is None else port, log_config=None,
                          access_log=False, lifespan="on", limit_concurrency=cfg.max_connections,
                          timeout_graceful_shutdown=5, server_header=False)


def run_server(cfg: ServeConfig, stop: threading.Event | None = None) -> None:
    """``seq2seq-rm serve``: load the RM, bind, and serve until interrupted (Ctrl-C, SIGTERM), or
    until ``stop`` is set (for a server run in a thread, where signals do not reach it)."""
    import uvicorn

    from ..rewards import load_reward_model
    from ..rewards.base import read_meta

    api_key = read_api_key(cfg.api_key_env)
    read_meta(cfg.rm)  # a folder that is no RM folder stops here, naming the missing file
    rm = load_reward_model(cfg.rm, device=cfg.device, dtype=cfg.dtype, server=cfg.rm_server,
                           server_key_env=cfg.rm_server_key_env)
    app = create_app(rm, cfg, api_key=api_key)
    config = uvicorn_config(app, cfg)
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    if api_key is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s without an API key: anyone who can reach it can use it (--api-key-env)", host)
    log.info("serving the %s RM %s on http://%s:%d (%s; max batch %d rows / %d tokens, wait %g ms)",
             rm.kind, cfg.rm, host, port,
             f"API key from ${cfg.api_key_env}" if api_key else "no API key",
             cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_wait_ms)
    if stop is not None:
        def watch():
            stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, daemon=True, name="reward-server-stop").start()
    server.run(sockets=[sock])
    log.info("reward server stopped")


class ServerThread:
    """The app under uvicorn in a background thread, bound now (``port=0``: a free port); for tests
    and benchmarks::

        with ServerThread(app, cfg) as srv:
            urllib.request.urlopen(srv.url + "/health")
    """

    def __init__(self, app, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.config = uvicorn_config(app, cfg, host=host, port=port)
        self.server = uvicorn.Server(self.config)
        self.socket = self.config.bind_socket()
        self.port = self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                        name="reward-server")

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the reward server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ApiError", "Row", "RowResult", "ServerThread", "create_app", "run_server", "score_rows"]
