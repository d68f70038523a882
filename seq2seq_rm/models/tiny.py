"""Tiny Llama-style models with a byte-level BPE tokenizer trained on the task's own corpus.

These let the whole pipeline (SFT, reward model, RL) run on a CPU in seconds, with no download.
The tokenizer uses the same ChatML layout as SmolLM2-Instruct, so code written against the tiny
model works unchanged on SmolLM2.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..errors import DataError, ModelError
from ..io import atomic_dir
from .loading import save_model

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
EOT_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOT_TOKEN, IM_START, IM_END]

# ChatML, the layout SmolLM2-Instruct uses (without its default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MAX_POSITIONS = 1024

SIZES: dict[str, dict] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 2048,
    },
    "mini": {  # ~1.0M parameters: enough depth to learn to copy facts from the prompt (summaries)
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 384,
        "vocab_size": 2048,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 768,
        "vocab_size": 4096,
    },
}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Every UTF-8 string round-trips through ``decode(encode(text))`` because the 256 byte symbols are
    always in the vocabulary. A corpus too small for ``vocab_size`` just gives a smaller vocabulary.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (the byte alphabet), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Offsets cover each token's whole span (leading space included): exact character spans.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[EOT_TOKEN, IM_START],
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def template_texts() -> list[str]:
    """The fixed text of the default templates (data/templates.py), repeated so BPE learns it."""
    from ..config import TemplateConfig

    t = TemplateConfig()
    return [t.prompt_format, t.source_format, t.rewrite_instruction] * 20


def build_tiny_model(
    corpus_texts: list[str],
    out_dir: str,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int | None = None,
    overwrite: bool = False,
) -> str:
    """Train a tokenizer on ``corpus_texts``, build a randomly initialised Llama model, save both
    with ``tiny_model.json`` (size, seed, parameters).

    The folder is written atomically (temporary sibling, then one rename); an earlier tiny model
    at ``out_dir`` is replaced only with ``overwrite``. Returns ``out_dir``.
    """
    from ..outputs import META_FILES, check_output_dir

    if size not in SIZES:
        raise ModelError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    check_output_dir(out_dir, "tiny-model", overwrite)
    dims = dict(SIZES[size])
    vocab = vocab_size if vocab_size is not None else dims.pop("vocab_size")
    dims.pop("vocab_size", None)
    texts = list(corpus_texts)
    if not texts:
        raise ModelError("cannot build a tokenizer from an empty corpus")
    # The model will also read the project's template scaffolding (markers, the rewrite
    # instruction): without it in the corpus those words fall apart into single bytes,
    # which makes every seq2seq RM source several times longer than it needs to be.
    tokenizer = train_tokenizer(texts + template_texts(), vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **dims,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir, replace=overwrite) as tmp:
        save_model(model, tokenizer, tmp)
        meta = {"kind": "tiny-model", "size": size, "seed": seed, "vocab_size": len(tokenizer), "parameters": n_params,
                "corpus_texts": len(texts)}
        (tmp / META_FILES["tiny-model"]).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("built %s model (%d params, vocab %d) in %s", size, n_params, len(tokenizer), out_dir)
    return str(out_dir)


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def corpus_texts_from_jsonl(path: str | os.PathLike) -> list[str]:
    """Every string value in every row of a JSONL file (nested dicts and lists included).

    Blank lines are skipped. A line that is not valid JSON raises :class:`DataError` naming the file
    and line.
    """
    path = Path(path)
    texts: list[str] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read corpus file: {e.strerror or e}", file=str(path)) from e
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 (byte {e.start})", file=str(path), row=lineno) from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"invalid JSON: {e.msg} (column {e.colno})", file=str(path), row=lineno
                ) from e
            texts.extend(s for s in _strings(row) if s)
    return texts
