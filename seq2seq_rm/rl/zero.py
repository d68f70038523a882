"""DeepSpeed ZeRO for PPO: the actor and the critic each get their own DeepSpeed engine.

Why not ``accelerator.prepare``: accelerate 1.15 prepares at most one model per ``prepare`` call
under DeepSpeed and its ``Accelerator.backward`` drives only the first engine it built (its
multi-model support is documented as "very experimental"). PPO trains two models with their own
learning rates, so it builds the two engines itself with ``deepspeed.initialize``, from the
DeepSpeed config of the ``accelerate launch`` (``deepspeed_config_file`` or the inline
``zero_stage`` options of the accelerate YAML), and drives each one: ``engine.backward`` per
micro-batch, ``engine.step`` (gradient clipping, optimizer step, zeroing) at each minibatch's end.

What this module decides:

* ``auto`` values of the DeepSpeed config are filled from the PPO options
  (``train_micro_batch_size_per_gpu = mini_batch_size / grad_accum``, ``gradient_clipping =
  max_grad_norm``, ``bf16.enabled = (dtype == bfloat16)``); an explicit value that contradicts
  an option, an ``optimizer``/``scheduler`` section, fp16 and ZeRO stages other than 0-3 are
  refused before any model is loaded (:func:`check_launch_config`).
* DeepSpeed counts the micro-batches (``gradient_accumulation_steps = grad_accum``; ``step()``
  after every ``backward``, a no-op but at the minibatch's last), and the loss, already
  normalised over the whole minibatch by ``PPOTrainer.update``, is not divided again
  (``scale_wrt_gas=False``): a ZeRO run and a DDP run of the same steps give the same weights
  (tests/optional/test_deepspeed.py).
* The frozen reference policy and the reward model are plain copies on every process, outside
  DeepSpeed. Under ZeRO-3 they must therefore not be partitioned at load time: every model is
  loaded whole (:func:`unpartitioned_loading`), and an explicit ``zero3_init_flag: true`` (which
  asks ``from_pretrained`` to partition *every* model it loads) is refused; the actor and critic
  are partitioned when their engines are built.
* Under ZeRO-3 a parameter on one process holds only its shard (``p.ds_tensor``);
  :func:`gathered` makes the full weights visible (for saving, and for a vLLM weight push), and
  :func:`largest_abs` reads the shards and reduces over processes.

Under ZeRO-3 the HF rollout engine generates through DeepSpeed's gather hooks (one all-gather
per layer and token): correct, but slow; vLLM rollouts avoid it (one gather per step).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
from pathlib import Path

import torch

from ..errors import ConfigError

DEEPSPEED_MISSING = ("this launch asks for DeepSpeed (accelerate's distributed_type DEEPSPEED), and the deepspeed "
                     "package is not installed: pip install --no-build-isolation deepspeed (see the README, "
                     "'DeepSpeed ZeRO'), or launch with a DDP config")


def launch_uses_deepspeed() -> bool:
    """True inside ``accelerate launch`` with a DeepSpeed config (read from the environment that
    accelerate sets, so it can be checked when the config is read, before any model loads)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def accelerator_kwargs() -> dict:
    """``Accelerator(...)`` arguments for this launch. Without CUDA: ``cpu=True`` (DDP over gloo),
    except under DeepSpeed, which accelerate switches off when told ``cpu=True``; there DeepSpeed's
    own CPU accelerator runs it, and accelerate must be given the gloo backend (it picks none
    itself without a GPU, and would silently run one process per rank, unaware of the others)."""
    if torch.cuda.is_available():
        return {}
    if not launch_uses_deepspeed():
        return {"cpu": True}
    from accelerate.utils import InitProcessGroupKwargs

    return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.lower() == "auto"


def _get(conf: dict, dotted: str):
    node = conf
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(conf: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = conf
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _fill(conf: dict, dotted: str, value, option: str, where: str) -> None:
    """``conf[dotted] = value`` when missing or ``auto``; an explicit different value is refused
    (the PPO option ``option`` owns it)."""
    have = _get(conf, dotted)
    if have is None or _is_auto(have):
        _set(conf, dotted, value)
    elif have != value:
        raise ConfigError(f"{where}: {dotted} is {have!r}, but PPO sets it from {option} ({value!r}); set it to "
                          f"\"auto\" or remove it, and change {option} instead")


def zero_stage(conf: dict) -> int:
    stage = _get(conf, "zero_optimization.stage")
    return 0 if stage is None else int(stage)


def check_launch_config(conf: dict, where: str, dtype: str, zero3_init: bool) -> None:
    """Refuse a DeepSpeed config PPO cannot run, before any model is loaded."""
    for key in ("optimizer", "scheduler"):
        if key in conf:
            raise ConfigError(f"{where} has a `{key}` section; PPO builds its own AdamW (actor_lr, critic_lr, "
                              f"weight_decay) and warm-up (warmup_steps) for each model: remove the section")
    stage = _get(conf, "zero_optimization.stage")
    if stage is not None and not _is_auto(stage) and int(stage) not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, not {stage!r}")
    fp16 = _get(conf, "fp16.enabled")
    if fp16 is True or (isinstance(fp16, str) and fp16.lower() == "true") or (_is_auto(fp16) and dtype == "float16"):
        raise ConfigError(f"{where}: fp16 is not supported by PPO (no loss scaling in its loop); use bf16 "
                          "(dtype=bfloat16) or float32")
    bf16 = _get(conf, "bf16.enabled")
    if bf16 is True and dtype != "bfloat16":
        raise ConfigError(f"{where}: bf16.enabled=true casts the trained models to bfloat16 while dtype={dtype}; "
                          "set dtype=bfloat16, or bf16.enabled to \"auto\"")
    if zero3_init and zero_stage(conf) == 3:
        raise ConfigError(
            f"{where}: zero3_init_flag=true partitions every model at load time, including the frozen reference "
            "policy and the reward model, which PPO runs outside DeepSpeed engines (unpartitioned models cannot "
            "compute): set zero3_init_flag: false in the accelerate config (the actor and critic are still "
            "partitioned by ZeRO-3 when their engines are built)")


def master_weights(conf: dict, dtype: str) -> bool:
    """Whether DeepSpeed keeps float32 master weights for a half-precision model (``bf16.enabled``,
    ``auto`` meaning on for ``dtype=bfloat16``): then full-parameter bf16 training is safe."""
    bf16 = _get(conf, "bf16.enabled")
    return dtype == "bfloat16" and (bf16 is None or _is_auto(bf16) or bf16 is True
                                    or (isinstance(bf16, str) and bf16.lower() == "true"))


def launch_config() -> tuple[dict, str] | None:
    """The DeepSpeed config of this ``accelerate launch`` as accelerate will build it, and where
    it comes from; None outside a DeepSpeed launch. Read from accelerate's environment, so that
    :func:`check_launch_config` can run when the PPO config is read."""
    if not launch_uses_deepspeed():
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path.lower() != "none":
        try:
            return json.loads(Path(path).read_text(encoding="utf-8")), path
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} (the DeepSpeed config of this launch) cannot be read: {e}") from None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    conf = {"zero_optimization": {"stage": int(stage)}} if stage and stage.isdigit() else {}
    return conf, "the accelerate config's deepspeed_config"


def zero3_init_flag() -> bool:
    """Whether the launch explicitly asks for ``zero3_init_flag: true`` (accelerate's own default,
    when unset, is on for ZeRO-3; PPO loads whole models either way, see above)."""
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def unpartitioned_loading(plugin):
    """``from_pretrained`` without ZeRO-3's ``zero.Init`` for the body: accelerate registers the
    launch's DeepSpeed config with transformers (whatever ``zero3_init_flag`` says), which makes
    every model load partitioned under ZeRO-3. The registration is restored afterwards: transformers'
    ``generate`` reads it to keep all processes stepping together (``synced_gpus``), which ZeRO-3's
    per-layer gathers need."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def engine_config(plugin_config: dict, *, micro_batch: int, grad_accum: int, world: int, max_grad_norm: float, dtype: str,
                  hidden_size: int | None, where: str) -> dict:
    """The config of one PPO engine: the launch's DeepSpeed config with its ``auto`` values filled
    from the PPO options (a copy; the plugin's own config is left alone)."""
    conf = copy.deepcopy(plugin_config)
    check_launch_config(conf, where, dtype, zero3_init=False)
    _fill(conf, "train_micro_batch_size_per_gpu", micro_batch, "mini_batch_size / grad_accum", where)
    _fill(conf, "gradient_accumulation_steps", grad_accum, "grad_accum", where)
    conf["train_batch_size"] = micro_batch * grad_accum * world
    _fill(conf, "gradient_clipping", max_grad_norm, "max_grad_norm", where)
    if _is_auto(_get(conf, "bf16.enabled")) or _get(conf, "bf16.enabled") is None:
        _set(conf, "bf16.enabled", dtype == "bfloat16")
    if _is_auto(_get(conf, "fp16.enabled")):
        _set(conf, "fp16.enabled", False)
    if _get(conf, "zero_optimization.stage") is None or _is_auto(_get(conf, "zero_optimization.stage")):
        _set(conf, "zero_optimization.stage", 0)
    sizes = {"zero_optimization.reduce_bucket_size": lambda h: h * h,
             "zero_optimization.stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
             "zero_optimization.stage3_param_persistence_threshold": lambda h: 10 * h}
    for key, size in sizes.items():
        if _is_auto(_get(conf, key)):
            if hidden_size is None:
                raise ConfigError(f"{where}: {key} is \"auto\" and the model has no hidden_size; give a number")
            _set(conf, key, size(hidden_size))
    for key, value in list(conf.items()):  # accelerate-style "auto" left anywhere else: DeepSpeed would choke
        if _is_auto(value):
            raise ConfigError(f"{where}: {key} is \"auto\", which PPO does not fill; give a value")
    conf["zero_allow_untested_optimizer"] = True  # torch's AdamW, built by PPO
    conf.setdefault("steps_per_print", 10**9)  # our own metrics log; DeepSpeed's would only repeat them
    conf.setdefault("wall_clock_breakdown", False)
    return conf


def build_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, conf: dict):
    """``deepspeed.initialize`` for one trained model with PPO's own optimizer; returns the engine
    (callable like the model; ``engine.module`` is the model)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=conf)
    return engine


@contextlib.contextmanager
def gathered(*models):
    """The full weights of ZeRO-3-partitioned ``models`` on every process for the body (read-only;
    a collective call: every process must enter it). A no-op for unpartitioned models."""
    params = [p for m in models for p in m.parameters() if hasattr(p, "ds_tensor")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as contiguous CPU copies, a tensor shared by several names (tied
    embeddings) kept under its first name only (as ``save_model`` does). Inside :func:`gathered`
    under ZeRO-3. ZeRO's parameters are views of flat buffers, which safetensors' own
    shared-storage check cannot sort out."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = value.detach().to("cpu").clone().contiguous()
    return out


def _own_shard(p) -> torch.Tensor:
    """This process's ZeRO-3 shard of ``p`` without the padding: every shard has the same length,
    so the last ones end in padding that is never written (uninitialised memory, which read as
    weights looks like a diverged update)."""
    shard = p.ds_tensor.reshape(-1)
    start = torch.distributed.get_rank() * shard.numel() if torch.distributed.is_initialized() else 0
    return shard[: max(0, min(shard.numel(), p.ds_numel - start))]


def largest_abs(params, all_reduce=None) -> float:
    """Largest absolute value over ``params`` (their local ZeRO-3 shards where partitioned),
    maximised over processes with ``all_reduce(tensor) -> tensor`` (max) when given; inf/NaN
    propagate."""
    values = []
    for p in params:
        t = _own_shard(p) if hasattr(p, "ds_tensor") else p
        if t.numel():
            values.append(t.detach().abs().max().float())
    local = torch.stack(values).max() if values else torch.zeros(())
    if all_reduce is not None:
        nan = torch.isnan(local).float()
        local, nan = all_reduce(local), all_reduce(nan)
        if nan > 0:
            return float("nan")
    return float(local)


def installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None
