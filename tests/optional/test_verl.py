"""The verl reward manager (seq2seq_rm.integrations.verl) inside verl 0.9.1's own reward-loop code, on CPU.

Batches are hand-built ``DataProto``s laid out as verl's two trainers hand them to the reward loop:
the legacy trainer's (prompts left-padded, ``input_ids``, ``position_ids``, ``response_mask``) and the
V1 trainer's (prompts right-padded; only ``prompts``, ``responses``, ``attention_mask``, ``raw_prompt``),
responses right-padded, with EOS-terminated rows and rows cut without EOS (one at the full response
width, one shorter). They go through verl's ``RewardLoopWorker`` (which builds the manager from the
shipped examples/verl/ppo_seq2seq_rm.yaml through verl's importlib registration) and, in one test,
through verl's ``RewardLoopManager.compute_rm_score`` on a local Ray cluster.

What is checked, token by token, against computations that do not go through the manager:
* `seq2seq-rm rm score` on the same prompts and response texts (its token ids equal the batch's);
  a cut row scored with ``score_unfinished=append_eos`` equals `rm score` of its text (which appends the
  EOS) with the EOS's reward folded into the last real token;
* the RM scoring each row alone, unpadded (for ``as_is``, the penalty, and an extraction override);
a shifted or misaligned tensor fails these (the expected rows are checked to be shift-sensitive).

Needs verl: `make test-verl` builds .venv-verl and runs these (marker `verl`); skipped elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_jsonl

pytestmark = [pytest.mark.verl]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "verl"
WIDTH = 24  # the batch's response width (verl: data.max_response_length)
SYSTEM = "You are a careful assistant."


def _verl():
    return pytest.importorskip("seq2seq_rm.integrations.verl", reason="needs verl (make test-verl)")


# ------------------------------------------------------------------------------------------ the rows


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from seq2seq_rm.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def rows(tok, sample_rows):
    """(messages, response ids, finished) for 4 EOS rows and 2 cut rows of varied lengths."""
    from seq2seq_rm.data.templates import encode_response

    eos = tok.eos_token_id
    out, cut = [], []
    for i, r in enumerate(sample_rows):
        msgs = [{"role": "user", "content": r["prompt"]}]
        if i % 3 == 0:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        for text in (r["chosen"], r["rejected"]):
            ids = encode_response(text, tok)
            lengths = {len(x[1]) for x in out}
            if len(out) < 4 and len(ids) <= WIDTH - 2 and len(ids) not in lengths:
                out.append((msgs, ids, True))
            plain = ids[:-1]
            for n in (WIDTH, WIDTH - 5):  # cut at the full width, and shorter
                if len(cut) < 2 and len(plain) > n and n not in {len(c[1]) for c in cut}:
                    piece = _round_trip_prefix(tok, plain, n)
                    if piece is not None:
                        cut.append((msgs, piece, False))
        if len(out) == 4 and len(cut) == 2:
            break
    assert len(out) == 4 and len(cut) == 2, "the sample data has too few responses of the needed lengths"
    rows = [out[0], cut[0], out[1], out[2], cut[1], out[3]]
    assert all(ids[-1] == eos for _, ids, f in rows if f) and all(eos not in ids for _, ids, f in rows if not f)
    return rows


def _round_trip_prefix(tok, ids, n):
    """``ids[:n]`` when its decoded text encodes back to the same ids (so `rm score` sees the same tokens)."""
    piece = ids[:n]
    text = tok.decode(piece, skip_special_tokens=True)
    return piece if tok(text, add_special_tokens=False).input_ids == piece else None


def _pad_to(seqs, width, pad, left):
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s)
        mask[i, cols] = 1
    return ids, mask


def make_batch(tok, rows, trainer="legacy"):
    """A DataProto as verl's reward loop gets it: ``legacy`` (main_ppo_v0: prompts left-padded, the full
    batch) or ``v1`` (trainer_base._compute_reward_colocate: prompts right-padded, four fields)."""
    from verl import DataProto

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False).input_ids for m, _, _ in rows]
    p_ids, p_mask = _pad_to(prompts, max(map(len, prompts)) + 1, pad, left=(trainer == "legacy"))
    r_ids, r_mask = _pad_to([ids for _, ids, _ in rows], WIDTH, pad, left=False)
    attention = torch.cat([p_mask, r_mask], dim=1)
    raw = np.empty(len(rows), dtype=object)
    raw[:] = [m for m, _, _ in rows]
    tensors = {"prompts": p_ids, "responses": r_ids, "attention_mask": attention}
    non_tensors = {"raw_prompt": raw}
    if trainer == "legacy":
        tensors.update(input_ids=torch.cat([p_ids, r_ids], 1), response_mask=r_mask,
                       position_ids=(attention.cumsum(-1) - 1).clamp(min=0))
        non_tensors.update(data_source=np.array(["seq2seq_rm"] * len(rows), dtype=object),
                           uid=np.array([str(i) for i in range(len(rows))], dtype=object))
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


# ------------------------------------------------------------------------------- verl's code paths


def compose(policy, rm, **options):
    """verl's full PPO config: ppo_trainer + examples/verl/ppo_seq2seq_rm.yaml + the manager's options."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [f"actor_rollout_ref.model.path={policy}", f"reward.reward_model.model_path={rm}",
                 "data.train_files=unused", "data.val_files=unused"]
    overrides += [f"{k}={_hydra_value(v)}" for k, v in options.items()]
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return hydra_compose(config_name="ppo_seq2seq_rm", overrides=overrides)


def _hydra_value(v) -> str:
    """``v`` in Hydra's override grammar."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str) and not os.path.isabs(v):
        return "'" + v + "'"
    return json.dumps(v) if not isinstance(v, str) else v


def _opts(**kw):
    return {f"reward.reward_kwargs.seq2seq_rm.{k}": v for k, v in kw.items()}


def rm_scores(config, data):
    """What verl's RewardLoopManager.compute_rm_score does with one worker, without Ray: the worker scores
    every row (run_single through compute_score_batch), the manager class assembles ``rm_scores``."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    worker = RewardLoopWorker(config, reward_router_address=None)
    outputs = asyncio.run(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outputs]
    return resolve_reward_manager_cls(config).assemble_rm_scores(data, scores), outputs, worker


# --------------------------------------------------------------------------- independent expectations


def rm_score_cli(rm_dir, tok, rows, tmp_path):
    """`seq2seq-rm rm score` on the rows' prompts and response texts: {row: (token ids, rewards)}."""
    from seq2seq_rm.cli import main

    data = write_jsonl(tmp_path / "responses.jsonl",
                       [{"prompt": m, "response": tok.decode(ids, skip_special_tokens=True)} for m, ids, _ in rows])
    out = tmp_path / "scores.json"
    assert main(["rm", "score", "--rm", rm_dir, "--data", data, "--out", str(out), "--show", "0", "--overwrite"]) == 0
    return [(r["token_ids"], r["rewards"]) for r in json.loads(out.read_text())["rows"]]


def alone(rm, msgs, ids, finished, score_unfinished="append_eos", penalty=0.0):
    """The row scored alone, unpadded (the RM's own call), cut rows handled as documented."""
    eos = rm.tokenizer.eos_token_id
    seq = list(ids) + ([eos] if not finished and score_unfinished == "append_eos" else [])
    t = torch.tensor([seq])
    r = rm.token_rewards([msgs], t, torch.ones_like(t, dtype=torch.bool)).rewards[0].float().clone()
    if len(seq) > len(ids):
        r = torch.cat([r[: len(ids) - 1], (r[len(ids) - 1] + r[len(ids)]).reshape(1)])
    if not finished:
        r[-1] -= penalty
    return r


def _assert_rows(dense, expected, rows):
    assert dense.shape == (len(rows), WIDTH) and dense.dtype == torch.float32
    for i, ((_, ids, _), exp) in enumerate(zip(rows, expected, strict=True)):
        n = len(ids)
        assert torch.allclose(dense[i, :n], torch.as_tensor(exp, dtype=torch.float32), atol=1e-5), (i, dense[i], exp)
        assert (dense[i, n:] == 0).all(), i


# ------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("kind", ["seq2seq", "scalar"])
def test_rm_scores_equal_rm_score_token_by_token_for_both_trainers_layouts(
        kind, tiny_model_dir, seq2seq_rm_dir, scalar_rm_dir, tok, rows, tmp_path):
    verl_mod = _verl()
    rm_dir = seq2seq_rm_dir if kind == "seq2seq" else scalar_rm_dir
    config = compose(tiny_model_dir, rm_dir)
    dense, outputs, worker = rm_scores(config, make_batch(tok, rows, "legacy"))
    assert isinstance(worker.reward_manager, verl_mod.Seq2SeqRMRewardManager)  # built by verl's importlib path
    assert worker.reward_manager.rm.kind == kind

    cli = rm_score_cli(rm_dir, tok, rows, tmp_path)
    expected = []
    for (_, ids, finished), (cli_ids, cli_r) in zip(rows, cli, strict=True):
        assert cli_ids == list(ids) + ([] if finished else [tok.eos_token_id])  # the very same tokens
        # a cut row: `rm score` appended the EOS; its reward belongs to the last real token
        expected.append(cli_r if finished else cli_r[:-2] + [cli_r[-2] + cli_r[-1]])
    _assert_rows(dense, expected, rows)

    # shift-sensitive: a tensor one column off (or rows swapped) would not match
    if kind == "seq2seq":
        assert any(len(set(e)) > 1 for e in expected)
        assert any(e[0] != e[1] for e in expected)
    else:  # the score on the last real token, zeros elsewhere
        for i, (_, ids, _) in enumerate(rows):
            assert dense[i, len(ids) - 1] != 0 and (dense[i, : len(ids) - 1] == 0).all()
    assert len({round(e[-1], 4) for e in expected}) > 1  # rows differ: a row mix-up would show

    # the same tensor from the V1 trainer's layout (prompts right-padded, only four fields)
    dense_v1, _, _ = rm_scores(config, make_batch(tok, rows, "v1"))
    assert torch.allclose(dense_v1, dense, atol=1e-5)
    # extra info: one number per row (verl turns it into a numpy column)
    for o, (_, _, finished), e in zip(outputs, rows, expected, strict=True):
        assert o["reward_extra_info"]["seq2seq_rm_finished"] == float(finished)
        assert o["reward_extra_info"]["seq2seq_rm_score"] == pytest.approx(sum(e), abs=1e-4)


def test_cut_rows_as_is_and_the_missing_eos_penalty(tiny_model_dir, seq2seq_rm_dir, tok, rows):
    _verl()
    config = compose(tiny_model_dir, seq2seq_rm_dir, **_opts(score_unfinished="as_is", missing_eos_penalty=0.5))
    dense, _, worker = rm_scores(config, make_batch(tok, rows))
    rm = worker.reward_manager.rm
    expected = [alone(rm, m, ids, f, "as_is", penalty=0.5) for m, ids, f in rows]
    _assert_rows(dense, expected, rows)
    # the penalty hits the last real token of cut rows only: compare with no penalty
    plain, _, _ = rm_scores(compose(tiny_model_dir, seq2seq_rm_dir, **_opts(score_unfinished="as_is")),
                            make_batch(tok, rows))
    for i, (_, ids, finished) in enumerate(rows):
        diff = torch.zeros(WIDTH)
        if not finished:
            diff[len(ids) - 1] = 0.5
        assert torch.allclose(plain[i] - dense[i], diff, atol=1e-5)
    # and append_eos (the default) differs from as_is exactly on the cut rows
    default, _, _ = rm_scores(compose(tiny_model_dir, seq2seq_rm_dir), make_batch(tok, rows))
    for i, (m, ids, finished) in enumerate(rows):
        assert torch.allclose(default[i, : len(ids)], alone(rm, m, ids, finished), atol=1e-5)


def test_rows_scored_together_equal_rows_scored_one_at_a_time(tiny_model_dir, seq2seq_rm_dir, tok, rows):
    _verl()
    together, _, _ = rm_scores(compose(tiny_model_dir, seq2seq_rm_dir), make_batch(tok, rows))
    one_by_one, _, _ = rm_scores(compose(tiny_model_dir, seq2seq_rm_dir, **_opts(max_batch_size=1)),
                                 make_batch(tok, rows))
    assert torch.allclose(together, one_by_one, atol=1e-5)


def test_extraction_options_override_the_rm_folder(tiny_model_dir, seq2seq_rm_dir, scalar_rm_dir, tok, rows):
    from seq2seq_rm.config import ExtractionConfig
    from seq2seq_rm.errors import ConfigError

    _verl()
    config = compose(tiny_model_dir, seq2seq_rm_dir,
                     **{"+reward.reward_kwargs.seq2seq_rm.extraction": {"magnitude": "prob", "rematch": "positive"}})
    dense, _, worker = rm_scores(config, make_batch(tok, rows))
    rm = worker.reward_manager.rm
    assert rm.extraction == ExtractionConfig(magnitude="prob", rematch="positive")
    _assert_rows(dense, [alone(rm, m, ids, f) for m, ids, f in rows], rows)
    assert not torch.equal(dense.abs(), dense.abs().round())  # probabilities, not +-1
    with pytest.raises(ConfigError, match="apply to a seq2seq RM"):
        rm_scores(compose(tiny_model_dir, scalar_rm_dir, **{"+reward.reward_kwargs.seq2seq_rm.extraction":
                                                             {"magnitude": "prob"}}), make_batch(tok, rows))


def test_what_the_manager_refuses(tiny_model_dir, seq2seq_rm_dir, scalar_rm_dir, sample_rows, tmp_path, tok, rows):
    from seq2seq_rm.errors import ConfigError
    from seq2seq_rm.models.tiny import build_tiny_model

    _verl()
    # another tokenizer: the RM cannot score the policy's token ids
    texts = [t for r in sample_rows[:40] for t in (r["prompt"], r["chosen"])]
    other = build_tiny_model(texts, str(tmp_path / "other"), size="tiny", seed=1, vocab_size=300)
    with pytest.raises(ConfigError, match="differs from the policy"):
        rm_scores(compose(other, seq2seq_rm_dir), make_batch(tok, rows))
    # verl's streaming mode passes one float per row: no place for per-token rewards
    for streaming in ({"reward.reward_model.enable": False},
                      {"reward.reward_model.enable_resource_pool": True, "reward.reward_model.nnodes": 1}):
        with pytest.raises(ConfigError, match="only in its colocated reward-model mode"):
            rm_scores(compose(tiny_model_dir, seq2seq_rm_dir, **streaming), make_batch(tok, rows))
    # a reward model without the custom function: verl would never call the manager
    with pytest.raises(ConfigError, match="custom_reward_function"):
        rm_scores(compose(tiny_model_dir, seq2seq_rm_dir, **{"reward.custom_reward_function.path": None}),
                  make_batch(tok, rows))
    # options are checked like every option of the project
    with pytest.raises(ConfigError, match="did you mean 'append_eos'"):
        rm_scores(compose(tiny_model_dir, scalar_rm_dir, **_opts(score_unfinished="append_eso")), make_batch(tok, rows))
    with pytest.raises(ConfigError, match="unknown option 'reward.reward_kwargs.seq2seq_rm.max_batch'"):
        rm_scores(compose(tiny_model_dir, scalar_rm_dir, **{"+reward.reward_kwargs.seq2seq_rm.max_batch": 2}),
                  make_batch(tok, rows))
    # a batch without the prompt's chat messages
    data = make_batch(tok, rows, "v1")
    data.non_tensor_batch.pop("raw_prompt")
    manager = rm_scores(compose(tiny_model_dir, scalar_rm_dir), make_batch(tok, rows[:1]))[2].reward_manager
    with pytest.raises(ConfigError, match="raw_prompt"):
        asyncio.run(manager.run_single(data[0:1]))


def test_the_scalar_rm_in_verls_streaming_mode_gives_the_same_tensor(tiny_model_dir, scalar_rm_dir, tok, rows):
    """Without a colocated reward model, verl's agent loop puts each row's float on its last token
    (agent_loop.py: rm_scores[arange, response_length - 1] = scores); for the scalar RM that is the tensor
    assemble_rm_scores gives."""
    _verl()
    data = make_batch(tok, rows)
    colocated, _, _ = rm_scores(compose(tiny_model_dir, scalar_rm_dir), data)
    config = compose(tiny_model_dir, scalar_rm_dir, **{"reward.reward_model.enable": False,
                                                       "reward.custom_reward_function.path": None,
                                                       "++reward.reward_kwargs.seq2seq_rm.rm": scalar_rm_dir})
    _, outputs, worker = rm_scores(config, data)
    scores = [o["reward_score"] for o in outputs]
    assert all(isinstance(s, float) for s in scores)
    prompt_length = data.batch["prompts"].size(1)
    length = data.batch["attention_mask"][:, prompt_length:].sum(dim=1) - 1
    streaming = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
    streaming[torch.arange(len(rows)), length] = torch.tensor(scores, dtype=torch.float32)  # verl's own lines
    assert torch.allclose(streaming, colocated, atol=1e-5)


def test_the_shipped_config_is_valid_for_verl(tiny_model_dir, seq2seq_rm_dir):
    """Every key of examples/verl/ppo_seq2seq_rm.yaml is one of verl's (but the manager's own options),
    and verl's own validation (main_ppo.validate_config) accepts the composed config."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    _verl()
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        base = hydra_compose(config_name="ppo_trainer")

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    ours = yaml.safe_load((EXAMPLES / "ppo_seq2seq_rm.yaml").read_text())
    for key in leaves({k: v for k, v in ours.items() if k not in ("hydra", "defaults")}):
        if key.startswith("reward.reward_kwargs."):
            continue
        node = base
        for part in key.split("."):
            assert part in node.keys(), f"{key} is not an option of verl {__import__('verl').__version__}"
            node = node._get_node(part)
    config = compose(tiny_model_dir, seq2seq_rm_dir)
    assert config.algorithm.adv_estimator == "gae" and config.reward.reward_model.enable
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert need_critic(config)  # GAE trains a critic


def test_prompts_parquet_reads_back_through_verls_dataset(tiny_model_dir, sample_rows, tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from seq2seq_rm.integrations.verl_data import main

    _verl()
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in sample_rows[:12]]
                          + [{"prompt": [{"role": "user", "content": "Hi there"}]}])
    assert main(["--prompts", prompts, "--policy", tiny_model_dir, "--out", str(tmp_path / "d"), "--val", "3"]) == 0
    from seq2seq_rm.models.loading import load_tokenizer

    cfg = OmegaConf.create({"max_prompt_length": 512, "return_raw_chat": True, "filter_overlong_prompts": False,
                            "cache_dir": str(tmp_path / "cache")})
    train = RLHFDataset(str(tmp_path / "d" / "train.parquet"), load_tokenizer(tiny_model_dir), cfg)
    val = RLHFDataset(str(tmp_path / "d" / "val.parquet"), load_tokenizer(tiny_model_dir), cfg)
    assert len(train) == 10 and len(val) == 3
    assert list(train[0]["raw_prompt"]) == [{"role": "user", "content": sample_rows[0]["prompt"]}]
    assert list(val[2]["raw_prompt"]) == [{"role": "user", "content": "Hi there"}]
    assert train[0]["data_source"] == "seq2seq_rm"


@pytest.mark.slow
def test_verls_reward_loop_manager_on_a_ray_cluster(tiny_model_dir, seq2seq_rm_dir, tok, rows, monkeypatch):
    """verl's RewardLoopManager.compute_rm_score itself, its two RewardLoopWorker actors on a local Ray
    cluster (CPU): padding to the worker count, chunking, Ray's transport of the per-token lists and
    assemble_rm_scores. verl's inference server for reward.reward_model.model_path (which the manager does
    not use, and which needs a GPU) is replaced by a stub."""
    import ray
    from verl.experimental.reward_loop import reward_loop

    _verl()

    class NoServer:
        def __init__(self, *a, **k):
            pass

        def get_router_address(self):
            return None

        def wake_up(self):
            pass

        def sleep(self):
            pass

    monkeypatch.setattr(reward_loop, "RewardModelManager", NoServer)
    config = compose(tiny_model_dir, seq2seq_rm_dir, **{"reward.num_workers": 2})
    data = make_batch(tok, rows[:5])  # 5 rows over 2 workers: verl pads to 6 and drops the pad's score
    expected, _, _ = rm_scores(config, data)
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        manager = reward_loop.RewardLoopManager(config)
        out = manager.compute_rm_score(data)
    finally:
        ray.shutdown()
    assert torch.allclose(out.batch["rm_scores"], expected, atol=1e-5)
    assert out.meta_info["reward_extra_keys"] == ["seq2seq_rm_score", "seq2seq_rm_finished"]
    assert out.non_tensor_batch["seq2seq_rm_finished"].tolist() == [float(f) for _, _, f in rows[:5]]
