"""seq2seq-rm: RLHF with sequence-to-sequence reward models (arXiv 2409.00162)."""

__version__ = "0.1.0"
