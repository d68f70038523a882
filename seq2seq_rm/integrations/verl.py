"""The seq2seq RM (and the scalar baseline) as a reward manager of verl 0.9.x.

:class:`Seq2SeqRMRewardManager` subclasses verl's
``verl.experimental.reward_loop.reward_manager.base.RewardManagerBase``. It loads an RM folder
written by ``seq2seq-rm rm train`` (either kind) with :func:`seq2seq_rm.rewards.load_reward_model`
and gives every response token of the policy its reward, so verl's GAE
(``algorithm.adv_estimator=gae``) sees the dense per-token rewards of the seq2seq RM:

* ``run_single`` scores one sample (verl hands the reward loop one row at a time); rows that arrive
  together are scored in one forward pass (up to ``max_batch_size``). It returns the row's token
  rewards as a list, one per real response token;
* ``assemble_rm_scores`` (a classmethod verl calls with the whole batch) lays those lists out as the
  dense ``(batch, response_len)`` float tensor ``rm_scores``, zero at padding, which verl turns into
  ``token_level_scores`` -> ``token_level_rewards`` (minus the in-reward KL when
  ``algorithm.use_kl_in_reward``) -> ``compute_gae_advantage_return``.

How verl 0.9.1 reaches it (verl/experimental/reward_loop/reward_loop.py, verl/trainer/ppo/v1/trainer_base.py,
verl/trainer/ppo/ray_trainer.py, verl/experimental/agent_loop/agent_loop.py):

* Only the *colocated reward-model* mode calls ``assemble_rm_scores``: ``reward.reward_model.enable=True``
  with ``enable_resource_pool=False``. Then, after rollout, ``RewardLoopManager.compute_rm_score`` sends
  the batch to the ``RewardLoopWorker`` actors, each calls ``run_single`` per row, and the manager class's
  ``assemble_rm_scores`` builds ``rm_scores``. In every other mode (no reward model, or a reward model
  on its own resource pool) the agent loop scores each row as it finishes and puts the returned
  ``reward_score``, a float, on the row's last token: a per-token list cannot pass. This manager
  refuses that mode for the seq2seq RM; the scalar RM works there too (its reward *is* one number on
  the last token: ``run_single`` then returns that number).
* With a reward model enabled, a ``RewardLoopWorker`` calls the manager only when
  ``reward.custom_reward_function.path`` is set (otherwise it scores with its own discriminative-RM
  code through an inference server). Point it at this module's :func:`compute_score` (never called).
* ``reward.reward_model.enable=True`` also makes verl start its inference server (``reward.reward_model.rollout``,
  e.g. vLLM) for ``reward.reward_model.model_path``, colocated on the training GPUs and woken only around
  the reward step. This manager does not use it (it scores in-process), so give it the smallest footprint.
* The ``RewardLoopWorker`` actors are Ray actors with no GPU (Ray hides the GPUs from them), so the RM
  runs on CPU there (``device=auto``); ``reward.num_workers`` workers each load one copy.

Options: ``reward.reward_kwargs.seq2seq_rm.*`` (:class:`VerlRewardOptions`), e.g.
``+reward.reward_kwargs.seq2seq_rm.score_unfinished=as_is``. Register the manager with
``reward.reward_manager.source=importlib reward.reward_manager.module.path=pkg://seq2seq_rm.integrations.verl
reward.reward_manager.name=Seq2SeqRMRewardManager`` (examples/verl/ has a launch script and config).

The batch layout the manager reads (both trainers): ``responses`` (B, R) right-padded, ``attention_mask``
(B, P+R) whose last R columns mark the real response tokens, ``prompts`` (B, P) (left-padded by the
legacy trainer, right-padded by the V1 trainer; not read: the RM renders the prompt itself from
``non_tensor_batch["raw_prompt"]``, the chat messages, with the layout it was trained with).
The response ids are the policy's: the RM must share the policy's tokenizer (checked).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import Dtype, ExtractionConfig, Options, from_dict, opt
from ..errors import ConfigError
from ..layout import right_pad
from ..rewards.policy import SCORE_UNFINISHED, check_same_tokenizer, policy_token_rewards

try:
    import verl
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
except ImportError as e:  # pragma: no cover - the default environment has no verl
    raise ImportError(
        f"seq2seq_rm.integrations.verl needs verl 0.9.x ({e}); `make test-verl` builds .venv-verl with verl==0.9.1"
    ) from e

log = logging.getLogger(__name__)

OPTIONS_KEY = "seq2seq_rm"  # reward.reward_kwargs.seq2seq_rm.*

if not str(getattr(verl, "__version__", "")).startswith("0.9."):
    log.warning("seq2seq_rm.integrations.verl was written against verl 0.9.x; this is verl %s",
                getattr(verl, "__version__", "?"))


@dataclass
class VerlRewardOptions(Options):
    """The manager's options, under ``reward.reward_kwargs.seq2seq_rm`` in verl's config."""

    rm: str | None = opt(None, "the RM folder (seq2seq-rm rm train, either kind); default: reward.reward_model.model_path")
    device: str = opt("auto", "where the RM runs: auto (cuda when the worker sees a GPU, else cpu) | cpu | cuda | cuda:N")
    dtype: Dtype = opt("float32", "storage dtype of the RM's weights")
    rm_server: str | None = opt(
        None, "score with a vLLM server (http://HOST:PORT/v1) serving the `rm` folder instead of loading its weights in "
              "every reward worker (seq2seq RMs; README, 'The seq2seq RM served by vLLM')")
    rm_server_key_env: str | None = opt(None, "environment variable holding rm_server's API key")
    trust_remote_code: bool = opt(False, "allow custom model code in the RM folder")
    score_unfinished: Literal["append_eos", "as_is"] = opt(
        "append_eos", "a response cut at the length budget (no EOS) is scored as if it stopped there (append_eos: "
        "the RM also scores the missing EOS, its reward going to the last real token) or as the cut tokens alone "
        "(as_is); as PPO's option of that name")
    missing_eos_penalty: float | None = opt(
        None, "subtract this from the last token's reward of every response cut without EOS; null: none", ge=0)
    extraction: ExtractionConfig | None = opt(
        None, "token-reward options for a seq2seq RM instead of those stored in its folder (as PPO's `extraction`)")
    eos_token_ids: list | None = opt(
        None, "token ids that end a finished response; default: the policy tokenizer's EOS and the EOS ids of the "
              "policy's generation_config.json (what verl's rollout stops on)")
    max_batch_size: int = opt(16, "rows scored in one forward pass (rows that reach the worker together)", ge=1)

    def check(self) -> None:
        if self.eos_token_ids is not None and not all(isinstance(i, int) and i >= 0 for i in self.eos_token_ids):
            raise ConfigError(f"eos_token_ids must be a list of token ids, got {self.eos_token_ids!r}")


def _plain(node):
    """An OmegaConf node (or anything else) as plain Python containers."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        pass
    return node


def _get(node, dotted: str, default=None):
    for key in dotted.split("."):
        if node is None:
            return default
        node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    return default if node is None else node


def read_options(config) -> VerlRewardOptions:
    """The manager's options from verl's config (``reward.reward_kwargs.seq2seq_rm``), checked."""
    raw = _plain(_get(config, f"reward.reward_kwargs.{OPTIONS_KEY}", {})) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"reward.reward_kwargs.{OPTIONS_KEY} must be a mapping of options, got {raw!r}")
    return from_dict(VerlRewardOptions, raw, prefix=f"reward.reward_kwargs.{OPTIONS_KEY}.")


def reward_mode(config) -> str:
    """``colocated`` when verl 0.9 will call ``assemble_rm_scores`` (a reward model on the training
    resource pool), else ``streaming`` (the agent loop puts one float per row on its last token)."""
    enabled = bool(_get(config, "reward.reward_model.enable", False))
    own_pool = bool(_get(config, "reward.reward_model.enable_resource_pool", False))
    return "colocated" if enabled and not own_pool else "streaming"


def _policy_eos_ids(tokenizer, config) -> list[int]:
    """The policy's EOS ids: its tokenizer's, and those its generation_config.json lists (verl's
    rollout stops on those; e.g. Qwen2.5-Instruct's <|im_end|> and <|endoftext|>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = _get(config, "actor_rollout_ref.model.path")
    if path and os.path.isfile(os.path.join(str(path), "generation_config.json")):
        from transformers import GenerationConfig

        try:
            eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
        except (OSError, ValueError) as e:
            log.warning("could not read %s/generation_config.json (%s); EOS: the tokenizer's", path, e)
            eos = None
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return sorted(int(i) for i in ids)


def _messages(raw) -> str | list[dict]:
    """verl's ``raw_prompt`` (chat messages; a numpy array or list of dicts) as this project's Prompt."""
    raw = _plain(raw)
    if isinstance(raw, str):
        return raw
    if hasattr(raw, "tolist"):
        raw = raw.tolist()
    msgs = []
    for m in raw:
        m = _plain(m)
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise ConfigError("raw_prompt must hold chat messages with text content ({'role': ..., 'content': str}); "
                              f"got {m!r} (multimodal prompts are not supported)")
        msgs.append({"role": m["role"], "content": m["content"]})
    return msgs


def response_row(data: DataProto) -> tuple[list[int], object]:
    """The real response ids of the one row in ``data`` and its prompt (``raw_prompt``)."""
    if len(data) != 1:
        raise ValueError(f"run_single takes one row, got {len(data)}")
    responses = data.batch["responses"][0]
    width = responses.shape[-1]
    mask = data.batch["attention_mask"][0, -width:].bool()
    n = int(mask.sum())
    if not bool(mask[:n].all()):
        raise ValueError("the response part of attention_mask is not right-padded (real tokens first); "
                         "verl 0.9 lays responses out that way")
    raw = data.non_tensor_batch.get("raw_prompt")
    if raw is None:
        raise ConfigError("the batch has no non_tensor_batch['raw_prompt'] (the prompt's chat messages), which the "
                          "RM needs to render its input: set data.return_raw_chat=True")
    return responses[:n].tolist(), _messages(raw[0])


def compute_score(*args, **kwargs):
    """Not a reward function: verl's ``RewardLoopWorker`` calls the reward manager's ``run_single`` only
    when ``reward.custom_reward_function.path`` is set, so set it to this module with ``name=compute_score``.
    :class:`Seq2SeqRMRewardManager` never calls it."""
    raise RuntimeError("seq2seq_rm.integrations.verl.compute_score is a placeholder: use reward.reward_manager."
                       "name=Seq2SeqRMRewardManager (see the module docstring)")


class Seq2SeqRMRewardManager(RewardManagerBase):
    """verl reward manager giving each response token its seq2seq RM reward (or the scalar RM's score on
    the last token). See the module docstring for the config and for verl's modes."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs):
        super().__init__(config, tokenizer, compute_score)
        from ..rewards import load_reward_model

        self.options = opts = read_options(config)
        self.mode = reward_mode(config)
        if _get(config, "reward.reward_model.enable", False) and not _get(config, "reward.custom_reward_function.path"):
            raise ConfigError(
                "reward.reward_model.enable=True without reward.custom_reward_function.path: verl 0.9's reward loop "
                "would score with its own discriminative-RM code and never call this manager; set "
                "reward.custom_reward_function.path=pkg://seq2seq_rm.integrations.verl "
                "reward.custom_reward_function.name=compute_score")
        path = opts.rm or _get(config, "reward.reward_model.model_path")
        if not path:
            raise ConfigError(f"no reward model: set reward.reward_kwargs.{OPTIONS_KEY}.rm=DIR "
                              "(or reward.reward_model.model_path)")
        device = opts.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rm = load_reward_model(str(path), device=device, trust_remote_code=opts.trust_remote_code,
                                    dtype=opts.dtype, server=opts.rm_server, server_key_env=opts.rm_server_key_env)
        policy = _get(config, "actor_rollout_ref.model.tokenizer_path") or _get(config, "actor_rollout_ref.model.path")
        check_same_tokenizer(tokenizer, self.rm.tokenizer, str(policy or "the policy"), str(path))
        if opts.extraction is not None:
            if self.rm.kind != "seq2seq":
                raise ConfigError(f"extraction options apply to a seq2seq RM; {path} is a {self.rm.kind} RM")
            self.rm.extraction = opts.extraction
        if self.mode == "streaming" and self.rm.kind == "seq2seq":
            raise ConfigError(
                "verl 0.9 passes per-token rewards (assemble_rm_scores) only in its colocated reward-model mode; in "
                "this mode (reward.reward_model.enable=False, or enable_resource_pool=True) the agent loop puts one "
                "float per response on its last token. Set reward.reward_model.enable=True, "
                "reward.reward_model.enable_resource_pool=False (examples/verl/ppo_seq2seq_rm.yaml)")
        self.eos_ids = set(opts.eos_token_ids) if opts.eos_token_ids is not None else set(
            _policy_eos_ids(tokenizer, config))
        if not self.eos_ids:
            raise ConfigError(f"the policy's tokenizer has no EOS token: set reward.reward_kwargs.{OPTIONS_KEY}."
                              "eos_token_ids")
        self.rm_path = str(path)
        self._pending: list[tuple[list[int], object, asyncio.Future]] = []
        self._flushes: set[asyncio.Task] = set()
        self._lock = threading.Lock()  # one forward pass at a time (flushes run in executor threads)
        log.info("seq2seq-rm %s RM %s on %s for verl (%s mode; EOS ids %s)", self.rm.kind, path, device, self.mode,
                 sorted(self.eos_ids))

    # -------------------------------------------------------------- scoring (plain, synchronous)

    def score_rows(self, rows: list[tuple[list[int], object]]) -> list[dict]:
        """``run_single``'s results for ``(response ids, prompt)`` rows, scored together."""
        ids, mask = right_pad([r for r, _ in rows], self.rm.pad_id)
        lengths = mask.sum(-1)
        finished = torch.tensor([bool(r) and r[-1] in self.eos_ids for r, _ in rows])
        with self._lock:
            rewards = policy_token_rewards(
                self.rm, [p for _, p in rows], ids, mask, finished, score_unfinished=self.options.score_unfinished,
                missing_eos_penalty=self.options.missing_eos_penalty)
        out = []
        for i, n in enumerate(lengths.tolist()):
            row = rewards[i, :n]
            total = float(row.sum())
            out.append({
                "reward_score": row.tolist() if self.mode == "colocated" else total,
                "reward_extra_info": {"seq2seq_rm_score": total, "seq2seq_rm_finished": float(finished[i])},
            })
        return out

    # -------------------------------------------------------------- verl's interface

    async def run_single(self, data: DataProto) -> dict:
        """Token rewards of the one row in ``data``: ``{"reward_score": [one float per real response token]
        (a float, the scalar RM's score, in streaming mode), "reward_extra_info": {...}}``. Rows that reach
        the worker together (verl's ``compute_score_batch`` starts them all at once) share a forward pass."""
        row = response_row(data)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((*row, fut))
        if len(self._pending) == 1:
            task = loop.create_task(self._flush())
            self._flushes.add(task)  # asyncio keeps only weak references to tasks
            task.add_done_callback(self._flushes.discard)
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the rows started in the same round queue up
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        size = self.options.max_batch_size
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            try:
                results = await loop.run_in_executor(None, self.score_rows, [(r, p) for r, p, _ in chunk])
            except Exception as e:  # noqa: BLE001 - handed to every waiting row
                for *_, fut in chunk:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (*_, fut), res in zip(chunk, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        """The dense ``rm_scores`` (B, R) float32 of the batch: row ``i`` holds ``scores[i]`` (its token
        rewards, one per real response token) from column 0, zeros at padding. A float score (the
        scalar RM in streaming use) goes on the row's last real token, as verl's own managers do."""
        responses = data.batch["responses"]
        width = responses.shape[-1]
        lengths = data.batch["attention_mask"][:, -width:].sum(-1).tolist()
        if len(scores) != len(lengths):
            raise ValueError(f"{len(scores)} scores for a batch of {len(lengths)}")
        out = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
        for i, (s, n) in enumerate(zip(scores, lengths, strict=True)):
            if isinstance(s, (int, float)):
                if n:
                    out[i, n - 1] = float(s)
                continue
            if len(s) != n:
                raise ValueError(f"row {i}: {len(s)} token rewards for {n} response tokens")
            if n:
                out[i, :n] = torch.tensor(s, dtype=torch.float32)
        return out


__all__ = ["SCORE_UNFINISHED", "Seq2SeqRMRewardManager", "VerlRewardOptions", "compute_score", "read_options",
           "response_row", "reward_mode"]
