"""Optional tests that need more than the project's venv (marker ``vllm``: a vLLM server in
``.venv-vllm``). Collected with the rest of ``tests/`` but skipped unless the marker is asked
for: ``make test-vllm`` runs ``pytest tests/optional -m vllm``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if "vllm" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="optional vLLM test: run `make test-vllm` (pytest tests/optional -m vllm)")
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)
