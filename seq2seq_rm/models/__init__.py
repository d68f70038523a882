"""Models: loading/saving with actionable errors, tiny from-scratch models, LoRA, GGUF conversion."""

from .loading import (
    ensure_pad_token,
    export_gguf,
    gguf_to_folder,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    save_model,
)
from .lora import apply_lora, merge_lora
from .tiny import SIZES, build_tiny_model, corpus_texts_from_jsonl, train_tokenizer

__all__ = [
    "SIZES",
    "apply_lora",
    "build_tiny_model",
    "corpus_texts_from_jsonl",
    "ensure_pad_token",
    "export_gguf",
    "gguf_to_folder",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "merge_lora",
    "save_model",
    "train_tokenizer",
]
