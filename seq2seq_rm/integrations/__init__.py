"""Adapters that put this project's reward models inside other RLHF engines.

Each submodule imports its engine, so none is imported by ``seq2seq_rm`` itself:

* :mod:`seq2seq_rm.integrations.verl`: a reward manager for verl 0.9.x (``make test-verl``).
"""
