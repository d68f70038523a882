"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch


def machine_info(threads: int | None = None) -> dict:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "interop_threads": torch.get_num_interop_threads(),
    }
