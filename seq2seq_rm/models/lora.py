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
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%d: %d of %d parameters trainable", r, alpha, trainable, total)
    return peft_model


def merge_lora(model) -> PreTrainedModel:
    """Fold the LoRA weights into the base weights and return the plain base model."""
    if not isinstance(model, PeftModel):
        if isinstance(model, PreTrainedModel):
            return model
        raise ModelError(f"merge_lora expects a peft model, got {type(model).__name__}")
    return model.merge_and_unload()
