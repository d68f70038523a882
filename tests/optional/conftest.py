"""Optional tests that need more than the project's venv, each kind under its own marker:

* ``vllm``: a vLLM *server* started from ``.venv-vllm``; pytest itself runs in ``.venv``.
* ``vllm_engine``: vLLM's engine *in the test process*, so pytest must run under ``.venv-vllm``'s
  python (vLLM pins its own torch and transformers; the project is installed there too).
* ``deepspeed``: DeepSpeed ZeRO runs (two processes on CPU), under ``.venv-deepspeed``'s python
  (``make test-deepspeed``).
* ``verl``: the verl reward manager inside verl's reward loop, under ``.venv-verl``'s python (verl 0.9.1
  pins transformers < 5.11; ``make test-verl``).

Collected with the rest of ``tests/`` but skipped unless their marker is asked for:
``make test-vllm`` runs ``pytest tests/optional -m vllm`` in .venv and
``pytest tests/optional -m vllm_engine`` in .venv-vllm."""

from __future__ import annotations

import re

import pytest

OPTIONAL = {"vllm": "make test-vllm", "vllm_engine": "make test-vllm", "deepspeed": "make test-deepspeed",
            "verl": "make test-verl"}


def pytest_collection_modifyitems(config, items):
    asked = set(re.findall(r"\w+", config.getoption("markexpr") or ""))
    for item in items:
        for name, target in OPTIONAL.items():
            if item.get_closest_marker(name) is not None and name not in asked:
                item.add_marker(pytest.mark.skip(
                    reason=f"optional test (marker {name}): run `{target}` (pytest tests/optional -m {name})"))
