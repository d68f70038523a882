"""LoRA adapters via peft: wrap a model for training, and merge the adapters back in."""

from __future__ import annotations

import logging

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from ..errors import ModelError

logger = logging.getLogger(__name__)

# FEATURE_EXTRACTION: a bare backbone, e.g. the PPO critic's (its value head is trained in full).
_TASK_TYPES = {"CAUSAL_LM": TaskType.CAUSAL_LM, "SEQ_CLS": TaskType.SEQ_CLS,
               "FEATURE_EXTRACTION": TaskType.FEATURE_EXTRACTION}


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    task_type: str = "CAUSAL_LM",
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only the adapters (and, for ``SEQ_CLS``, the ``score`` head) train.

    ``target_modules="all-linear"`` targets every linear layer except the output layer (``lm_head``
    for a causal LM; the ``score`` head for ``SEQ_CLS``, which is trained in full instead).
    """
    task = _TASK_TYPES.get(str(task_type).upper())
    if task is None:
        raise ModelError(f"task_type must be one of {sorted(_TASK_TYPES)}, got {task_type!r}")
    if r <= 0:
        raise ModelError(f"LoRA rank r must be positive, got {r}")
    modules_to_save = None
    if task is TaskType.SEQ_CLS:
        if not hasattr(model, "score"):
            raise ModelError(
                f"task_type SEQ_CLS needs a model with a `score` head; got {type(model).__name__}"
            )
        modules_to_save = ["score"]
        if isinstance(target_modules, (list, tuple)) and "score" in target_modules:
            raise ModelError("`score` is trained in full for SEQ_CLS; leave it out of target_modules")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task,
        modules_to_save=modules_to_save,
        bias="none",
    )
    # autocast_adapter_dtype (peft's default): adapters of a bfloat16/float16 base are created in float32.
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    keep_trained_weights_float32(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%d: %d of %d parameters trainable", r, alpha, trainable, total)
    return peft_model


def keep_trained_weights_float32(model) -> list[str]:
    """Store every trainable half-precision parameter in float32; returns their names.

    peft already creates LoRA adapters in float32 over a bfloat16/float16 base, but a head trained in
    full (``modules_to_save``, e.g. the scalar RM's ``score``) is copied in the base's dtype, where
    AdamW's small updates would be rounded away. Each module whose own parameters were cast up gets
    a forward pre-hook casting its floating inputs to float32, so a half-precision body can feed it.
    """
    import torch

    half = (torch.bfloat16, torch.float16)
    cast: list[str] = []
    for module_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad and p.dtype in half]
        if not own:
            continue
        for n, p in own:
            p.data = p.data.float()
            cast.append(f"{module_name}.{n}" if module_name else n)
        if "lora_" not in module_name:  # peft's LoRA layers cast their own inputs
            module.register_forward_pre_hook(_inputs_to_float32)
    if cast:
        logger.info("trained weights kept in float32 over a half-precision base: %s", ", ".join(cast[:4])
                    + (" ..." if len(cast) > 4 else ""))
    return cast


def _inputs_to_float32(module, args):
    import torch

    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def merge_lora(model) -> PreTrainedModel:
    """Fold the LoRA weights into the base weights and return the plain base model.

    A half-precision (bfloat16/float16) base is cast to float32 first (in place), so the merged
    model is float32: rounding ``base + B @ A`` back to bfloat16 would drop every change smaller
    than ~1/256 of a weight, which is most of a LoRA fine-tune's update at small learning rates
    (the rounding this project refuses in training, see ``config.check_precision``).
    """
    if not isinstance(model, PeftModel):
        if isinstance(model, PreTrainedModel):
            return model
        raise ModelError(f"merge_lora expects a peft model, got {type(model).__name__}")
    import torch

    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model.float()
    return model.merge_and_unload()
