"""The seq2seq RM served by vLLM: token rewards from a server's prompt log-probabilities.

The extraction needs, at every response position t, three things of the RM: log p(y_t), whether
y_t is a greedy choice, and the greedy token with its log-prob (``seq2seq.token_rewards_from_stats``).
An OpenAI-compatible vLLM server gives exactly these for a prompt sent as token ids:
``POST /v1/completions`` with ``{"prompt": [[ids], ...], "max_tokens": 1, "prompt_logprobs": 1}``
answers, per prompt, ``choices[i].prompt_logprobs``: for every position (the first is null) a map
``{"token id": {"logprob": lp, "rank": r, ...}}`` holding the actual token (its rank: 1 + the
number of tokens strictly more likely, so a tie counts as greedy) and the rank-1 token. The prompt
is ``S(x, y) ++ y``, laid out as the local RM lays it out (``Seq2SeqRewardModel.layout``), so the
positions of ``y`` read off the RM's verdicts. (Read off vLLM 0.32's server; vLLM's log-probs are
the raw model's, whatever sampling settings the request carries.)

This is how the RM scales: many RM replicas behind vLLM's own batching, with no code of ours in
the hot path; ``serve`` and PPO use it through ``load_reward_model(..., server=URL)``. Only the
seq2seq RM: a scalar RM's score head is not a language model head that vLLM's completions serve.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ..config import ExtractionConfig, TemplateConfig
from ..data.templates import resolve_style
from ..errors import ConfigError, ModelError, Seq2SeqRMError
from ..layout import pad_id
from .seq2seq import Seq2SeqRewardModel, token_rewards_from_stats

TIMEOUT_S = 300.0


class ServedSeq2SeqRewardModel(Seq2SeqRewardModel):
    """A seq2seq RM folder's layout and extraction options, its scoring done by a vLLM server
    that serves the same folder. ``url``: the server's OpenAI base (``http://HOST:PORT/v1``)."""

    def __init__(self, tokenizer, template: TemplateConfig, extraction: ExtractionConfig | None, url: str,
                 model_name: str, window: int, api_key: str | None = None, timeout: float = TIMEOUT_S):
        # no local model: the parts of RewardModelBase.__init__ that do not need one
        self.model = None
        self.tokenizer = tokenizer
        self.template = template
        self.extraction = extraction or ExtractionConfig()
        self.style = resolve_style(template, tokenizer)
        self.max_length = window
        self.pad_id = pad_id(tokenizer)
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.api_key = api_key
        self.timeout = timeout
        self.requests = 0  # completions calls made (one per scored batch)

    @classmethod
    def connect(cls, path: str | Path, url: str, template: TemplateConfig, extraction: ExtractionConfig,
                trust_remote_code: bool = False, api_key_env: str | None = None) -> ServedSeq2SeqRewardModel:
        """The RM folder ``path`` (tokenizer, layout) scored by the server at ``url``: which of its
        models serves the folder, and the window both allow, are read from ``GET /models``."""
        from ..models.loading import load_tokenizer

        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ConfigError(f"rm server key: environment variable {api_key_env} is not set or empty")
        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        probe = cls(tokenizer, template, extraction, url, "", 0, api_key)
        models = probe._request("GET", "/models").get("data") or []
        name, served_len = _pick_model(models, Path(path), url)
        window = _local_window(Path(path))
        probe.model_name = name
        # the local RM's window (its config), capped by what the server accepts, so that long rows are
        # cut exactly as the local RM cuts them whenever the server allows it
        probe.max_length = min(window, served_len) if served_len else window
        return probe

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def score_layout(self, sources: list[list[int]], packed: torch.Tensor, packed_mask: torch.Tensor):
        """Rewards, agree, predicted (B, T') from the server's prompt log-probs of ``source ++ response``."""
        lengths = packed_mask.sum(-1).tolist()
        prompts = [src + row[:n] for src, row, n in zip(sources, packed.tolist(), lengths, strict=True)]
        body = {"model": self.model_name, "prompt": prompts, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 1}
        choices = sorted(self._request("POST", "/completions", body).get("choices") or [],
                         key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise Seq2SeqRMError(f"{self.url}: {len(choices)} answers for {len(prompts)} prompts")
        shape = packed.shape
        logp_y = torch.zeros(shape)
        logp_top = torch.zeros(shape)
        greedy = torch.zeros(shape, dtype=torch.bool)
        argmax = torch.full(shape, self.pad_id, dtype=torch.long)
        for b, (choice, src, n) in enumerate(zip(choices, sources, lengths, strict=True)):
            entries = choice.get("prompt_logprobs")
            if not isinstance(entries, list) or len(entries) != len(src) + n:
                raise Seq2SeqRMError(f"{self.url}: no prompt_logprobs of {len(src) + n} positions in the answer "
                                     "(is it a vLLM server?)")
            for t in range(n):
                y = int(packed[b, t])
                stats = {int(k): v for k, v in (entries[len(src) + t] or {}).items()}
                if y not in stats:
                    raise Seq2SeqRMError(f"{self.url}: the answer lacks the log-prob of token {y}")
                top = min(stats, key=lambda k: (stats[k]["rank"], k != y))  # the actual token when it ties
                logp_y[b, t] = stats[y]["logprob"]
                logp_top[b, t] = stats[top]["logprob"]
                greedy[b, t] = stats[y]["rank"] == 1
                argmax[b, t] = top
        if not torch.isfinite(logp_y[packed_mask]).all():
            raise Seq2SeqRMError(f"{self.url}: non-finite log-probs in the answer")
        self.requests += 1
        return token_rewards_from_stats(logp_y, logp_y - logp_top, greedy, argmax, packed, packed_mask,
                                        self.extraction)

    def rewrite(self, prompts, responses, max_new_tokens: int = 64) -> list[str]:
        """Not offered: the RM's own rewrites (the experiment report's) come from a local RM."""
        raise Seq2SeqRMError("a vLLM-served RM scores tokens only; load the RM folder locally for its rewrites")

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise Seq2SeqRMError(f"{self.url}{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Seq2SeqRMError(f"{self.url}{path}: {e} (is the vLLM server running? start it with "
                                 "`vllm serve RM_DIR --dtype float32`, see README)") from None


def _pick_model(models: list[dict], path: Path, url: str) -> tuple[str, int | None]:
    """The served model for the RM folder ``path``: the only one, or the one whose ``root`` is it."""
    if not models:
        raise ModelError(f"{url}/models lists no model")
    if len(models) > 1:
        here = os.path.realpath(path)
        models = [m for m in models if os.path.realpath(str(m.get("root", ""))) == here] or models
        if len(models) > 1:
            raise ModelError(f"{url} serves several models ({', '.join(m.get('id', '?') for m in models)}) and "
                             f"none is the folder {path}; serve the RM folder alone")
    m = models[0]
    return str(m["id"]), (int(m["max_model_len"]) if m.get("max_model_len") else None)


def _local_window(path: Path) -> int:
    """The window the local RM would use: its config's ``max_position_embeddings`` (as
    ``RewardModelBase``), 4096 when it records none."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'config.json'}: {e}") from None
    value = cfg.get("max_position_embeddings")
    return int(value) if isinstance(value, (int, float)) and not math.isnan(value) else 4096
