"""The ``seq2seq-rm eval`` and ``seq2seq-rm inspect`` commands (parsers and ``cmd_*`` functions),
kept here so they are tested; ``seq2seq_rm/cli.py`` registers them with :func:`add_parsers` and
``COMMANDS.update(EVAL_COMMANDS)``."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("seq2seq_rm")


def add_parsers(sub) -> None:
    """Add ``eval`` and ``inspect`` to the top-level subparsers of ``seq2seq-rm``."""
    e = sub.add_parser("eval", help="win rate of model a's responses over model b's, judged in both orders")
    e.add_argument("--a", dest="file_a", required=True, help="rows with prompt and response (model a)")
    e.add_argument("--b", dest="file_b", required=True, help="the same prompts in the same order (model b)")
    e.add_argument("--judge", required=True, help="oracle:TASK | hf:PATH | openai:MODEL")
    e.add_argument("--out", required=True, help="folder for metrics.json, pairs.jsonl and report.md")
    e.add_argument("--base-url", help="OpenAI-compatible server for openai:MODEL (default https://api.openai.com/v1)")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key ('' for a server that needs none)")
    e.add_argument("--names", nargs=2, metavar=("A", "B"), default=["a", "b"], help="names in the report")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--cache-dir", help="reply cache for openai:MODEL (default ~/.cache/seq2seq_rm/judge)")
    e.add_argument("--concurrency", type=int, default=4, help="parallel requests for openai:MODEL")

    i = sub.add_parser("inspect", help="token-level rewards of responses as an HTML heatmap")
    i.add_argument("--rm", required=True, help="reward model folder (seq2seq or scalar)")
    i.add_argument("--data", required=True, help="rows with prompt and response")
    i.add_argument("--out", required=True, help="HTML file to write")
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--limit", type=int, help="only the first N responses")


def cmd_eval(a: argparse.Namespace) -> None:
    from .judges import make_judge
    from .report import format_table
    from .run import evaluate_files

    kw = {}
    if a.judge.startswith("openai:"):
        kw = {"api_key_env": a.api_key_env or None, "concurrency": a.concurrency}
        if a.cache_dir:
            kw["cache_dir"] = a.cache_dir
    judge = make_judge(a.judge, base_url=a.base_url, **kw)
    result, diagnostics = evaluate_files(
        a.file_a, a.file_b, judge, a.out, names=tuple(a.names), seed=a.seed,
        tokenizer=getattr(judge, "tokenizer", None),
    )
    print(format_table(result, diagnostics))
    log.info("wrote metrics.json, pairs.jsonl and report.md to %s", a.out)


def cmd_inspect(a: argparse.Namespace) -> None:
    from .heatmap import inspect_to_html

    out = inspect_to_html(a.rm, a.data, a.out, batch_size=a.batch_size, limit=a.limit)
    log.info("wrote the token-reward heatmap to %s", out)


EVAL_COMMANDS = {"eval": cmd_eval, "inspect": cmd_inspect}
