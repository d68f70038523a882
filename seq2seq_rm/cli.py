"""``seq2seq-rm`` command line. Thin: parse arguments into a config, call one function.

Commands with a config (``rm train``, ``sft``, ``ppo``, ``demo``, ``experiment``) take their
common options as flags, everything else from ``--config FILE.yaml`` and ``key=value``
overrides, which may stand anywhere among the flags. One precedence rule, later wins:
defaults < the command's preset < --config YAML < flags < key=value.
``seq2seq-rm options CMD`` lists every option with its default, allowed values and help.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from .errors import ConfigError, Seq2SeqRMError

log = logging.getLogger("seq2seq_rm")

DESCRIPTION = (
    "RLHF with sequence-to-sequence reward models (arXiv 2409.00162): check what a data file holds "
    "(data inspect), train a policy (sft), a seq2seq reward model and the scalar Bradley-Terry baseline "
    "(rm train), look at their token-level rewards (rm score, inspect), run PPO with them (ppo), and judge "
    "the results (eval). `demo` runs the whole comparison on the bundled offline tasks."
)
DTYPE_CHOICES = ["auto", "bfloat16", "float16", "float32"]  # config.Dtype (not imported: the CLI starts fast)
# Commands that read a config: they accept key=value overrides.
CONFIG_COMMANDS = {"rm-train": "rm train", "sft": "sft", "ppo": "ppo", "experiment": "experiment",
                   "data-inspect": "data inspect"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default (when it has one) after its help text."""

    def _get_help_string(self, action):
        config_default = getattr(action, "config_default", None)
        if config_default is not None:  # a config option's default, read only when help is shown
            return f"{action.help} (default: {config_default()})"
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _ppo_default(key: str):
    def read():
        from .rl.ppo import PPOConfig

        return getattr(PPOConfig(), key)

    return read


def _serve_default(key: str):
    def read():
        from .serve.config import ServeConfig

        return getattr(ServeConfig, key)

    return read


def _setup_logging(verbose: bool) -> None:
    """Logs and errors go to stderr, one line each, never wrapped (paths stay copyable)."""
    quiet_rank = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports progress
    ours = logging.getLogger("seq2seq_rm")  # every module logs under it; it still propagates to the root
    for h in [h for h in ours.handlers if getattr(h, "_seq2seq_rm", False)]:
        ours.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    handler._seq2seq_rm = True
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING if quiet_rank else logging.DEBUG if verbose else logging.INFO)
    # transformers sets its own level when it is first imported (after this runs): tell it through its
    # environment variable too. An explicit TRANSFORMERS_VERBOSITY wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if verbose else "error")
    if not verbose:
        # No datasets progress bars ("Building labels ...", "Map ...") over data we tokenised ourselves;
        # hub downloads keep theirs. Already imported (e.g. in a test), tell it directly.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
    for noisy in ("transformers", "datasets", "trl", "accelerate", "httpx", "urllib3", "filelock", "matplotlib",
                  "PIL", "peft", "torch", "tensorboard"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _config_flags(p: argparse.ArgumentParser, which: str, training: bool = True) -> None:
    if training:
        from .config import TrainOptions

        d = TrainOptions()
        g = p.add_argument_group("training (shortcuts for train.* options; TRL's names work too)")
        g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=float,
                       help=f"train.epochs: passes over the data (default {d.epochs:g})")
        g.add_argument("--lr", "--learning_rate", dest="lr", type=float,
                       help=f"train.lr: peak learning rate (default {d.lr:g})")
        g.add_argument("--batch-size", "--per_device_train_batch_size", dest="batch_size", type=int,
                       help=f"train.batch_size: examples per step (default {d.batch_size})")
        g.add_argument("--max-length", "--max_length", dest="max_length", type=int,
                       help=f"train.max_length: longest token sequence (default {d.max_length})")
        g.add_argument("--seed", type=int, help=f"train.seed (default {d.seed})")
    if which in ("rm-train", "sft", "ppo"):
        p.add_argument("--dtype", choices=DTYPE_CHOICES,
                       help="dtype: storage dtype of the model weights (auto: the checkpoint's own; default float32)")
    p.add_argument("--config", help=f"YAML file with options (see `seq2seq-rm options {which}`; default: none)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier output of this command")
    if training:
        p.add_argument("--resume", action="store_true", default=None,
                       help="continue the run in OUT.run/ from its newest checkpoint")
    p.epilog = f"Any option as key=value, anywhere among the flags (see `seq2seq-rm options {which}`)."


def _data_flags(p: argparse.ArgumentParser, trl: bool = False) -> None:
    """--split and --subset; ``trl``: also under TRL's names (--dataset_train_split, --dataset_config)."""
    split = ("--split", "--dataset_train_split") if trl else ("--split",)
    subset = ("--subset", "--dataset_config") if trl else ("--subset",)
    p.add_argument(*split, dest="split", help="split of a datasets folder, hub dataset or JSON object (default: train)")
    p.add_argument(*subset, dest="subset", help="hub dataset subset / configuration name (default: the dataset's default)")


def _columns_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", metavar="NAME=COLUMN,...",
                   help="the dataset's own column names, e.g. prompt=question,chosen=good,rejected=bad "
                        "(names: prompt, chosen, rejected, response, completion, text, messages; default: the "
                        "names as they are)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seq2seq-rm", description=DESCRIPTION, formatter_class=_Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="library logs and warnings too")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(parent, name, help_):
        return parent.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)

    t = cmd(sub, "tiny-model", "train a byte-level BPE tokenizer and write a small random Llama model")
    t.add_argument("--corpus", required=True, help="JSONL; every string field of every row is text")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--size", choices=["tiny", "mini", "small"], default="tiny", help="model size")
    t.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (default: the size's)")
    t.add_argument("--seed", type=int, default=0, help="initialisation seed")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier tiny model at --out")

    rm = cmd(sub, "rm", "reward models: train, eval, score").add_subparsers(dest="rm_command", required=True)
    tr = cmd(rm, "train", "train a seq2seq RM or the scalar Bradley-Terry baseline")
    tr.add_argument("--kind", choices=["seq2seq", "scalar"], help="kind (default seq2seq)")
    tr.add_argument("--model", "--model_name_or_path", dest="model",
                    help="base model folder, hub id, or folder holding --gguf-file")
    tr.add_argument("--gguf-file", help="GGUF file inside --model (default: none, safetensors weights)")
    tr.add_argument("--data", "--dataset_name", dest="data",
                    help="preference data (JSONL/JSON/Parquet/datasets folder/hub name)")
    tr.add_argument("--format", dest="data_format",
                    help="standard | conversational | pku_saferlhf | summarize_from_feedback | hh_rlhf (default auto)")
    tr.add_argument("--out", "--output_dir", dest="out", help="output folder")
    _columns_flag(tr)
    _data_flags(tr, trl=True)
    _config_flags(tr, "rm-train")

    ev = cmd(rm, "eval", "pairwise accuracy on held-out preference pairs")
    ev.add_argument("--rm", required=True, help="reward model folder")
    ev.add_argument("--data", required=True, help="preference data")
    ev.add_argument("--format", default="auto", help="preference data format")
    _columns_flag(ev)
    ev.add_argument("--json", help="write the metrics here as JSON (default: not written)")
    ev.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    ev.add_argument("--limit", type=int, help="only the first N pairs (default: all)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _data_flags(ev)

    sc = cmd(rm, "score", "token-level rewards of responses (rows with prompt and response)")
    sc.add_argument("--rm", required=True, help="reward model folder")
    sc.add_argument("--data", required=True, help="rows with prompt and response")
    sc.add_argument("--out", required=True, help="JSON file with tokens, rewards and the RM's tokens")
    sc.add_argument("--batch-size", type=int, default=16, help="responses per forward pass")
    sc.add_argument("--limit", type=int, help="only the first N responses (default: all)")
    sc.add_argument("--show", type=int, default=5, help="responses to print coloured (0: none)")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    sc.add_argument("--rm-server", metavar="URL",
                    help="score with a vLLM server serving the --rm folder (http://HOST:PORT/v1; seq2seq RMs) "
                         "instead of loading its weights (default: none)")
    sc.add_argument("--rm-server-key-env", metavar="VAR",
                    help="environment variable holding that server's API key (default: none)")
    _data_flags(sc)

    s = cmd(sub, "sft", "supervised fine-tuning of the policy (loss on response tokens only)")
    s.add_argument("--model", "--model_name_or_path", dest="model",
                   help="base model folder, hub id, or folder holding --gguf-file")
    s.add_argument("--gguf-file", help="GGUF file inside --model (default: none, safetensors weights)")
    s.add_argument("--data", "--dataset_name", dest="data",
                   help="SFT rows (prompt/response, prompt/completion, messages, text) or preference rows "
                        "(trains on chosen)")
    s.add_argument("--format", dest="data_format",
                   help="auto | prompt | prompt_completion | messages | text | a preference format (default auto)")
    s.add_argument("--response-field", choices=["auto", "response", "chosen"],
                   help="response: the SFT formats' target; chosen: preference rows (default auto)")
    s.add_argument("--dataset_text_field", "--text-field", dest="text_field", metavar="COLUMN",
                   help="the column holding the text of `text` rows (= --columns text=COLUMN; default: text)")
    _columns_flag(s)
    s.add_argument("--out", "--output_dir", dest="out", help="output folder")
    _data_flags(s, trl=True)
    _config_flags(s, "sft")

    g = cmd(sub, "generate", "sample one response per prompt into a JSONL file")
    g.add_argument("--model", required=True, help="policy folder (its sft.json/policy.json gives the prompt layout)")
    g.add_argument("--prompts", required=True, help="rows with 'prompt' (preference rows work too)")
    g.add_argument("--out", required=True, help="JSONL file: the input columns, prompt, response, finished, n_tokens")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling (default: unseeded)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="longest response in tokens")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="generation engine")
    g.add_argument("--dtype", choices=DTYPE_CHOICES,
                   help="storage dtype of the weights, engine hf (auto: the checkpoint's own; default float32)")
    g.add_argument("--limit", type=int, help="only the first N prompts (default: all)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _data_flags(g)

    pp = cmd(sub, "ppo", "PPO with the token-level rewards of a seq2seq RM (or a scalar RM's)")
    pp.add_argument("--policy", help="SFT policy folder")
    pp.add_argument("--rm", help="reward model folder (seq2seq or scalar)")
    pp.add_argument("--prompts", help="prompts (JSONL etc. with a `prompt` field)")
    pp.add_argument("--out", help="final policy folder; OUT.run/ holds checkpoints, metrics, samples")
    pp.add_argument("--steps", type=int, help="PPO iterations").config_default = _ppo_default("steps")
    pp.add_argument("--seed", type=int, help="seed").config_default = _ppo_default("seed")
    pp.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint")
    _data_flags(pp)
    _config_flags(pp, "ppo", training=False)

    o = cmd(sub, "options", "list every config option with its default, allowed values and help")
    o.add_argument("which", choices=sorted(CONFIG_COMMANDS), help="the command whose options to list")

    d = cmd(sub, "demo", "the paper's experiment on the bundled offline tasks, one seed (~10 min on CPU)")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--seed", type=int, help="the seed (default 0)")
    d.add_argument("--resume", action="store_true", help="continue a stopped demo in --out (same options)")
    _config_flags(d, "experiment", training=False)

    x = cmd(sub, "experiment", "the full grid: several seeds plus the extraction ablation")
    x.add_argument("--tasks", help="comma-separated task names, or all (default all)")
    x.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default 3)")
    x.add_argument("--out", default="runs/experiment", help="output folder")
    x.add_argument("--resume", action="store_true",
                   help="continue a stopped experiment in --out (same options): finished stages are kept")
    _config_flags(x, "experiment", training=False)

    da = cmd(sub, "data", "look at data before training on it").add_subparsers(dest="data_command", required=True)
    di = cmd(da, "inspect", "what the loaders make of a data file: format, rows read, kept and skipped (by reason, "
                            "with row numbers), and example records")
    di.add_argument("file", metavar="FILE", help="JSONL/JSON/Parquet file, datasets folder, or hub name")
    di.add_argument("--format", dest="data_format",
                    help="auto | prompt | prompt_completion | messages | text | standard | conversational | "
                         "pku_saferlhf | summarize_from_feedback | hh_rlhf (default auto)")
    _columns_flag(di)
    di.add_argument("--examples", type=int, help="example records to show (default 2)")
    di.add_argument("--json", metavar="OUT",
                    help="also write the numbers (format, rows, kept, skipped, ...) as JSON (default: not written)")
    di.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _data_flags(di)
    di.epilog = "Any option as key=value (see `seq2seq-rm options data-inspect`), e.g. pku_preference=safer."

    tk = cmd(sub, "tasks", "bundled offline tasks").add_subparsers(dest="tasks_command", required=True)
    te = cmd(tk, "export", "write a task split as JSONL (preferences, prompts, SFT rows)")
    te.add_argument("task", help="safety | summarize | instruct")
    te.add_argument("--split", choices=["train", "test", "ood"], default="train", help="split")
    te.add_argument("--out", required=True, help="output folder")
    te.add_argument("--n", type=int, help="number of prompts (default: the split's documented size)")
    te.add_argument("--seed", type=int, default=0, help="generator seed")
    te.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")

    e = cmd(sub, "eval", "win rate of model a's responses over model b's, judged in both orders")
    e.add_argument("--a", dest="file_a", required=True, help="rows with prompt and response (model a)")
    e.add_argument("--b", dest="file_b", required=True, help="the same prompts in the same order (model b)")
    e.add_argument("--judge", required=True, help="oracle:TASK | hf:PATH | openai:MODEL")
    e.add_argument("--out", required=True, help="folder for metrics.json, pairs.jsonl and report.md")
    e.add_argument("--names", nargs=2, metavar=("A", "B"), default=["a", "b"], help="names in the report")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--judge-prompt", metavar="FILE",
                   help="comparison prompt for hf: and openai: judges: a UTF-8 text file with the placeholders "
                        "{prompt}, {response_a} and {response_b} (default: the built-in prompt, see README)")
    e.add_argument("--dtype", choices=DTYPE_CHOICES,
                   help="hf:PATH judges: storage dtype of the judge's weights (auto: the checkpoint's own; "
                        "default float32)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation at --out")
    api = e.add_argument_group("openai:MODEL judges")
    api.add_argument("--base-url",
                     help="OpenAI-compatible server, ending in /v1 (default https://api.openai.com/v1)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key ('' for a server that needs none)")
    api.add_argument("--cache-dir", help="reply cache (default ~/.cache/seq2seq_rm/judge)")
    api.add_argument("--concurrency", type=int, default=4, help="parallel requests")
    api.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="deadline of one request attempt in all: connecting, waiting and reading, a slow or "
                          "trickling reply included (default 60)")
    api.add_argument("--max-retries", type=int, metavar="N",
                     help="retries of a timed-out, refused, 408/409/429 or 5xx request (default 3)")
    api.add_argument("--max-tokens", type=int, metavar="N",
                     help="reply length limit in tokens (default 128; a reasoning model may need far more)")
    api.add_argument("--token-param", choices=["auto", "max_tokens", "max_completion_tokens"],
                     help="how the limit is sent; auto: max_tokens, switching to max_completion_tokens when the "
                          "server refuses it (default auto)")
    api.add_argument("--temperature", metavar="T",
                     help="sampling temperature, or 'none' to send none (default 0; dropped automatically when "
                          "the model refuses it)")
    api.add_argument("--system-prompt", metavar="FILE",
                     help="system message, a UTF-8 text file (an empty file: none; default: the built-in one)")
    _data_flags(e)

    sv = cmd(sub, "serve", "serve a reward model over HTTP (token rewards, OpenRLHF's remote RM protocol) with "
                           "dynamic batching")
    sv.add_argument("--rm", required=True, help="reward model folder (seq2seq or scalar)")
    for flag, kind, help_ in (
        ("--host", str, "address to bind (127.0.0.1: this machine only)"),
        ("--port", int, "TCP port (0: any free port, printed at start-up)"),
        ("--api-key-env", str, "environment variable holding the API key; every request then needs "
                               "'Authorization: Bearer <key>' (unset or empty: refused; default: no key)"),
        ("--max-batch-size", int, "most response rows in one forward pass"),
        ("--max-batch-tokens", int, "most tokens in one forward pass, padding included (rows x longest row)"),
        ("--max-wait-ms", float, "how long a forward pass waits for more rows to join it"),
        ("--max-request-rows", int, "most rows in one request"),
        ("--max-queue-rows", int, "most rows waiting for a forward pass (more: 503)"),
        ("--max-body-bytes", int, "largest request body in bytes"),
        ("--max-connections", int, "most open connections (more: 503)"),
        ("--device", str, "torch device of the RM, e.g. cuda (default cpu)"),
        ("--rm-server", str, "score with a vLLM server (http://HOST:PORT/v1) serving the --rm folder (seq2seq RMs) "
                             "instead of loading its weights (default: none)"),
        ("--rm-server-key-env", str, "environment variable holding that server's API key (default: none)"),
    ):
        arg = sv.add_argument(flag, type=kind, help=help_)
        if flag not in ("--api-key-env", "--device", "--rm-server", "--rm-server-key-env"):
            arg.config_default = _serve_default(flag[2:].replace("-", "_"))
    sv.add_argument("--dtype", choices=DTYPE_CHOICES,
                    help="storage dtype of the RM's weights (auto: the checkpoint's own; default float32)")
    sv.epilog = ("Endpoints: POST /token_rewards, POST /get_reward (OpenRLHF --reward.remote_url), GET /health; "
                 "see README, 'Reward server'.")

    i = cmd(sub, "inspect", "token-level rewards of responses as an HTML heatmap")
    i.add_argument("--rm", required=True, help="reward model folder (seq2seq or scalar)")
    i.add_argument("--data", required=True, help="rows with prompt and response")
    i.add_argument("--out", required=True, help="HTML file to write")
    i.add_argument("--batch-size", type=int, default=16, help="responses per forward pass")
    i.add_argument("--limit", type=int, help="only the first N responses (default: all)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _data_flags(i)
    return p


# ------------------------------------------------------------------------------------------ commands


def cmd_tiny_model(a) -> None:
    from .models.tiny import build_tiny_model, corpus_texts_from_jsonl
    from .outputs import check_output_dir

    check_output_dir(a.out, "tiny-model", a.overwrite, inputs=[a.corpus])
    texts = corpus_texts_from_jsonl(a.corpus)
    out = build_tiny_model(texts, a.out, size=a.size, seed=a.seed, vocab_size=a.vocab_size, overwrite=a.overwrite)
    log.info("wrote %s model to %s", a.size, out)


def _train_flags(a) -> dict:
    return {"train.epochs": a.epochs, "train.lr": a.lr, "train.batch_size": a.batch_size,
            "train.max_length": a.max_length, "train.seed": a.seed}


def _columns(a) -> dict | None:
    """The --columns flag (and sft's --dataset_text_field) as the `columns` option, or None."""
    from .data.loading import parse_columns

    columns = parse_columns(getattr(a, "columns", None))
    if getattr(a, "text_field", None):
        columns["text"] = a.text_field
    return columns or None


def cmd_rm_train(a) -> None:
    from .config import RMTrainConfig, load_config
    from .rewards.train import train_reward_model

    flags = {"kind": a.kind, "model": a.model, "gguf_file": a.gguf_file, "data": a.data, "data_format": a.data_format,
             "split": a.split, "subset": a.subset, "out": a.out, "overwrite": a.overwrite, "resume": a.resume,
             "columns": _columns(a), "dtype": a.dtype, **_train_flags(a)}
    train_reward_model(load_config(RMTrainConfig, a.config, a.overrides, flags))


def cmd_sft(a) -> None:
    from .config import load_config
    from .sft import SFTRunConfig, train_sft

    flags = {"model": a.model, "gguf_file": a.gguf_file, "data": a.data, "data_format": a.data_format,
             "split": a.split, "subset": a.subset, "out": a.out, "overwrite": a.overwrite, "resume": a.resume,
             "response_field": a.response_field, "columns": _columns(a), "dtype": a.dtype, **_train_flags(a)}
    train_sft(load_config(SFTRunConfig, a.config, a.overrides, flags))


def cmd_data_inspect(a) -> None:
    from .config import load_config
    from .data.inspection import DataInspectConfig, format_inspection, inspect_file
    from .io import atomic_write_json
    from .outputs import check_output_file

    if a.json:
        check_output_file(a.json, a.overwrite, "inspection")
    flags = {"data": a.file, "data_format": a.data_format, "split": a.split, "subset": a.subset,
             "columns": _columns(a), "examples": a.examples}
    result = inspect_file(load_config(DataInspectConfig, None, a.overrides, flags))
    print(format_inspection(result))
    if a.json:
        atomic_write_json(a.json, result)
        log.info("wrote the inspection of %s to %s", a.file, a.json)


def cmd_generate(a) -> None:
    from .rl.rollout import SamplingConfig, generate_to_file

    sampling = SamplingConfig(
        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
        do_sample=not a.greedy, seed=a.seed,
    )
    generate_to_file(a.model, a.prompts, a.out, sampling, batch_size=a.batch_size, engine=a.engine, limit=a.limit,
                     split=a.split, subset=a.subset, overwrite=a.overwrite, dtype=a.dtype)


def cmd_rm_eval(a) -> None:
    from rich.console import Console
    from rich.table import Table

    from .data.loading import load_preferences
    from .io import atomic_write_json
    from .outputs import check_output_file
    from .rewards import load_reward_model
    from .rewards.evaluate import evaluate_pairs

    if a.json:
        check_output_file(a.json, a.overwrite, "metrics")
    rm = load_reward_model(a.rm)
    records, report = load_preferences(a.data, format=a.format, limit=a.limit, split=a.split, subset=a.subset,
                                       columns=_columns(a))
    log.info(report.summary())
    m = evaluate_pairs(rm, records, a.batch_size)
    m["rm"], m["data"] = str(a.rm), str(a.data)
    table = Table(title=f"{rm.kind} RM on {a.data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in m.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
        elif isinstance(v, dict):
            for kk, vv in v.items():
                table.add_row(f"{k}.{kk}.accuracy", f"{vv['accuracy']:.4f}")
        else:
            table.add_row(k, str(v))
    Console().print(table)
    if a.json:
        atomic_write_json(a.json, m)


def cmd_rm_score(a) -> None:
    from .config import to_dict
    from .io import atomic_write_json
    from .outputs import check_output_file
    from .rewards import load_reward_model
    from .rewards.views import render_terminal, score_file

    check_output_file(a.out, a.overwrite, "scores")
    rm = load_reward_model(a.rm, server=a.rm_server, server_key_env=a.rm_server_key_env)
    rows = score_file(rm, a.data, batch_size=a.batch_size, limit=a.limit, split=a.split, subset=a.subset)
    atomic_write_json(a.out, {"rm": str(a.rm), "kind": rm.kind, "extraction": to_dict(rm.extraction), "rows": rows})
    if a.show:
        render_terminal(rows, limit=a.show)
    log.info("wrote token rewards of %d responses to %s", len(rows), a.out)


def cmd_inspect(a) -> None:
    from .io import atomic_write_text
    from .outputs import check_output_file
    from .rewards import load_reward_model
    from .rewards.views import render_heatmap_html, score_file

    check_output_file(a.out, a.overwrite, "heatmap")
    rm = load_reward_model(a.rm)
    rows = score_file(rm, a.data, batch_size=a.batch_size, limit=a.limit, split=a.split, subset=a.subset)
    title = f"{rm.kind} RM token rewards: {Path(a.rm).name} on {Path(a.data).name}"
    atomic_write_text(a.out, render_heatmap_html(rows, title))
    log.info("wrote the token-reward heatmap to %s", a.out)


def serve_config(a):
    """The ``serve`` flags as a checked ServeConfig (flags left out keep its defaults)."""
    from .serve.config import ServeConfig

    keys = ("rm", "host", "port", "api_key_env", "max_batch_size", "max_batch_tokens", "max_wait_ms",
            "max_request_rows", "max_queue_rows", "max_body_bytes", "max_connections", "device", "dtype",
            "rm_server", "rm_server_key_env")
    return ServeConfig(**{k: getattr(a, k) for k in keys if getattr(a, k) is not None})


def cmd_serve(a) -> None:
    cfg = serve_config(a)
    from .serve.app import run_server

    run_server(cfg)


def cmd_eval(a) -> None:
    from .eval.compare import evaluate_files, format_table
    from .eval.judges import load_prompt_file, make_judge, most_common_error
    from .outputs import check_output_dir

    kind = a.judge.partition(":")[0]
    api = {"timeout": a.timeout, "max_retries": a.max_retries, "max_tokens": a.max_tokens,
           "token_param": a.token_param, "temperature": a.temperature, "system_prompt": a.system_prompt}
    given = {k: v for k, v in api.items() if v is not None}
    if given and kind != "openai":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise ConfigError(f"{flag} applies to openai:MODEL judges only, not to {a.judge}")
    if a.judge_prompt and kind == "oracle":
        raise ConfigError(f"--judge-prompt applies to hf: and openai: judges, not to {a.judge}")
    if a.dtype and kind != "hf":
        raise ConfigError(f"--dtype applies to hf:PATH judges (a local model) only, not to {a.judge}")
    if "temperature" in given:
        t = given["temperature"].strip().lower()
        try:
            given["temperature"] = None if t == "none" else float(t)
        except ValueError:
            raise ConfigError(f"--temperature must be a number or 'none', got {a.temperature!r}") from None
    if "system_prompt" in given:
        given["system_prompt"] = load_prompt_file(a.system_prompt, "--system-prompt", check=False).strip() or None
    kw = {}
    if a.judge_prompt:
        kw["prompt_template"] = load_prompt_file(a.judge_prompt, "--judge-prompt")
    if a.dtype:
        kw["dtype"] = a.dtype
    if kind == "openai":
        kw.update(api_key_env=a.api_key_env or None, concurrency=a.concurrency, **given)
        if a.cache_dir:
            kw["cache_dir"] = a.cache_dir
    check_output_dir(a.out, "eval", a.overwrite, inputs=[a.file_a, a.file_b])
    judge = make_judge(a.judge, base_url=a.base_url, **kw)
    result, diagnostics = evaluate_files(
        a.file_a, a.file_b, judge, a.out, names=tuple(a.names), seed=a.seed,
        tokenizer=getattr(judge, "tokenizer", None), overwrite=a.overwrite, split=a.split, subset=a.subset,
    )
    print(format_table(result, diagnostics))
    log.info("wrote metrics.json, pairs.jsonl and report.md to %s", a.out)
    if hasattr(judge, "requests_sent"):
        log.info("%s: %d requests sent, %d verdicts from the cache", judge.name, judge.requests_sent, judge.cache_hits)
    common = most_common_error(r[o]["error"] for r in result.records for o in ("order_ab", "order_ba"))
    if common is None:
        return
    reason, count, example = common
    n_bad = sum(r[o]["winner"] == "invalid" for r in result.records for o in ("order_ab", "order_ba"))
    what = f"the most common error ({count} of {n_bad} invalid verdicts): {example}"
    if result.n == 0:
        raise Seq2SeqRMError(
            f"no pair could be judged: all {len(result.records)} pairs have an invalid verdict; {what}. "
            f"Every verdict is in {os.path.join(a.out, 'pairs.jsonl')}"
        )
    log.warning("%s", what)


def cmd_ppo(a) -> None:
    from .config import load_config
    from .rl.ppo import PPOConfig, run_ppo

    flags = {"policy": a.policy, "rm": a.rm, "prompts": a.prompts, "out": a.out, "steps": a.steps, "seed": a.seed,
             "split": a.split, "subset": a.subset, "resume": a.resume, "overwrite": a.overwrite, "dtype": a.dtype}
    run_ppo(load_config(PPOConfig, a.config, a.overrides, flags))


def _config_classes() -> dict:
    from .config import RMTrainConfig
    from .data.inspection import DataInspectConfig
    from .experiment import ExperimentConfig
    from .rl.ppo import PPOConfig
    from .sft import SFTRunConfig

    return {"rm-train": RMTrainConfig, "sft": SFTRunConfig, "ppo": PPOConfig, "experiment": ExperimentConfig,
            "data-inspect": DataInspectConfig}


def cmd_options(a) -> None:
    from .config import describe

    rows = describe(_config_classes()[a.which])
    if a.which == "experiment":  # the experiment sets these for each arm
        from .experiment.config import PPO_SET_BY_EXPERIMENT, PPO_SET_PER_ARM

        rows = [r for r in rows if r[0].removeprefix("ppo.") not in PPO_SET_PER_ARM
                and not (r[0].startswith("ppo.") and r[0][4:] in PPO_SET_BY_EXPERIMENT)]
    width = max(len(k) for k, *_ in rows)
    for key, default, allowed, help_ in rows:
        print(f"{key:{width}s}  {default:>14s}  {help_}" + (f" [{allowed}]" if allowed else ""))


def _run_experiment(a, preset: dict, flags: dict) -> None:
    from .config import load_config
    from .experiment import ExperimentConfig, run_experiment

    cfg = load_config(ExperimentConfig, a.config, a.overrides, flags, preset=preset)
    html = run_experiment(cfg, a.out, overwrite=bool(a.overwrite), resume=bool(a.resume))
    from .experiment.report import headline

    print(headline(json.loads((Path(html).parent / "report.json").read_text(encoding="utf-8")), html))


def cmd_demo(a) -> None:
    from .experiment import DEMO_PRESET

    _run_experiment(a, preset=DEMO_PRESET, flags={"seeds": None if a.seed is None else [a.seed]})


def cmd_experiment(a) -> None:
    from .experiment import DEFAULT_ABLATION

    tasks = None
    if a.tasks is not None and a.tasks != "all":
        tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if a.seeds is not None and a.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {a.seeds}")
    _run_experiment(a, preset={"seeds": [0, 1, 2], "ablation": DEFAULT_ABLATION},
                    flags={"tasks": tasks, "seeds": None if a.seeds is None else list(range(a.seeds))})


def cmd_tasks_export(a) -> None:
    from .outputs import check_output_dir
    from .tasks import export_split, get_task

    task = get_task(a.task)
    check_output_dir(a.out, "task-export", a.overwrite)
    paths = export_split(task, a.split, a.out, n=a.n, seed=a.seed)
    for kind, path in paths.items():
        log.info("%s: %s", kind, path)


COMMANDS = {
    "tiny-model": cmd_tiny_model,
    "options": cmd_options,
    "demo": cmd_demo,
    "sft": cmd_sft,
    "generate": cmd_generate,
    "ppo": cmd_ppo,
    "experiment": cmd_experiment,
    "eval": cmd_eval,
    "inspect": cmd_inspect,
    "serve": cmd_serve,
    ("tasks", "export"): cmd_tasks_export,
    ("data", "inspect"): cmd_data_inspect,
    ("rm", "train"): cmd_rm_train,
    ("rm", "eval"): cmd_rm_eval,
    ("rm", "score"): cmd_rm_score,
}
_TAKES_OVERRIDES = {("rm", "train"), "sft", "ppo", "demo", "experiment", ("data", "inspect")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; every other argument must be a ``key=value`` override (of a config command)."""
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    a.key = (a.command, getattr(a, f"{a.command}_command")) if a.command in ("rm", "tasks", "data") else a.command
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    unknown = [x for x in extra if x not in overrides]
    if unknown or (overrides and a.key not in _TAKES_OVERRIDES):
        what = " ".join(unknown or overrides)
        parser.error(f"unrecognized arguments: {what}" + ("" if unknown else " (this command takes no key=value options)"))
    a.overrides = overrides
    return a


def _os_error_message(e: OSError) -> str:
    where = e.filename or "a file"
    if e.errno == errno.ENOSPC:
        return f"cannot write {where}: no space left on device. Free some space and run the command again"
    if e.errno == errno.EROFS:
        return f"cannot write {where}: the file system is read-only. Choose an output on a writable disk"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {where}: permission denied"
    if e.errno == errno.EDQUOT:
        return f"cannot write {where}: disk quota exceeded"
    return f"{where}: {e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = parse_args(argv)
    _setup_logging(a.verbose)
    try:
        COMMANDS[a.key](a)
    except Seq2SeqRMError as e:
        log.error("%s", e)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the closed pipe
        return 0
    except OSError as e:  # disk full, read-only, permissions: the user's to fix, not a crash
        log.error("%s", _os_error_message(e))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
