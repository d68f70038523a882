"""Prompts for verl: this project's prompt files as the parquet files verl's ``RLHFDataset`` reads.

verl 0.9 prompts the policy with ``tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)``
(its agent loop) and hands the same chat messages to the reward manager as ``raw_prompt``. So each
row's ``prompt`` is the list of chat messages, with the policy's ``system_prompt`` (from its
``sft.json`` / ``policy.json`` template) first, as ``seq2seq-rm ppo`` would lay it out; the other
columns are those verl's trainer carries (``data_source``, ``reward_model``, ``extra_info``).

    python -m seq2seq_rm.integrations.verl_data --prompts PROMPTS --policy POLICY_DIR --out DIR [--val N]

writes ``DIR/train.parquet`` and ``DIR/val.parquet`` (the last ``--val`` prompts; default 32). This
module does not import verl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import TemplateConfig
from ..errors import ConfigError, Seq2SeqRMError

DATA_SOURCE = "seq2seq_rm"


def verl_rows(prompts: list, template: TemplateConfig | None = None, split: str = "train") -> list[dict]:
    """verl rows for prompts (strings or chat messages)."""
    from ..data.templates import _messages

    template = template or TemplateConfig()
    rows = []
    for i, p in enumerate(prompts):
        msgs = [{"role": m["role"], "content": m["content"]} for m in _messages(p, template)]
        rows.append({"prompt": msgs, "data_source": DATA_SOURCE,
                     "reward_model": {"style": "model", "ground_truth": ""},
                     "extra_info": {"index": i, "split": split}})
    return rows


def write_verl_prompts(prompts_file: str, out_dir: str, policy: str | None = None, n_val: int = 32,
                       split: str | None = None, subset: str | None = None) -> tuple[Path, Path]:
    """``out_dir/train.parquet`` and ``out_dir/val.parquet`` from a prompt file (any format ``seq2seq-rm ppo``
    reads); the last ``n_val`` prompts go to val."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..data.loading import load_prompts
    from ..data.templates import resolve_style
    from ..outputs import read_policy_template

    template = TemplateConfig()
    if policy is not None:
        from ..models.loading import load_tokenizer

        template = read_policy_template(policy) or template
        if resolve_style(template, load_tokenizer(policy)) != "chat":
            raise ConfigError(f"{policy} was trained with the plain prompt layout; verl prompts the policy through "
                              "its tokenizer's chat template, so give it a policy with a chat template")
    records, report = load_prompts(prompts_file, split=split, subset=subset)
    if len(records) <= n_val:
        raise ConfigError(f"{prompts_file}: {len(records)} prompts, not enough for {n_val} validation prompts")
    prompts = [r.prompt for r in records]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", prompts[: len(prompts) - n_val]), ("val", prompts[len(prompts) - n_val :])):
        path = out / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(verl_rows(part, template, name)), path)
        paths.append(path)
    print(f"{report.summary()}\nwrote {paths[0]} ({len(prompts) - n_val} prompts) and {paths[1]} ({n_val})",
          file=sys.stderr)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m seq2seq_rm.integrations.verl_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True, help="prompt file (JSONL/JSON/parquet/datasets folder or hub id)")
    ap.add_argument("--out", required=True, help="folder for train.parquet and val.parquet")
    ap.add_argument("--policy", help="policy folder: its template's system prompt goes first in each prompt")
    ap.add_argument("--val", type=int, default=32, help="prompts held out for validation (default 32)")
    ap.add_argument("--split")
    ap.add_argument("--subset")
    a = ap.parse_args(argv)
    try:
        write_verl_prompts(a.prompts, a.out, a.policy, a.val, a.split, a.subset)
    except Seq2SeqRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
