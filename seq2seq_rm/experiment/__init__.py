"""The paper's comparison on the bundled offline tasks (``seq2seq-rm demo`` / ``experiment``):
``config.py`` (options), ``run.py`` (stages per seed), ``evaluate.py`` (oracle judgements),
``report.py`` (report.html, report.md, plots)."""

from .config import DEFAULT_ABLATION, DEMO_PRESET, ExperimentConfig
from .run import run_experiment

__all__ = ["DEFAULT_ABLATION", "DEMO_PRESET", "ExperimentConfig", "run_experiment"]
