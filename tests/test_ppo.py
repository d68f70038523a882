"""PPO: it learns, with either kind of reward; runs survive kills, Ctrl-C, NaN and full disks."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import write_jsonl
from transformers import AutoModelForCausalLM

from seq2seq_rm.config import TemplateConfig
from seq2seq_rm.errors import ConfigError, Seq2SeqRMError
from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.rewards.base import TokenRewards
from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer
from seq2seq_rm.rl.rollout import SamplingConfig


class CountTokenRM:
    """Rewards one token: +1 wherever it appears (dense, like the seq2seq RM), or its count
    on the last response token (like a scalar RM)."""

    def __init__(self, tokenizer, target: int, dense: bool, nan_at_call: int | None = None):
        self.tokenizer, self.target, self.dense = tokenizer, target, dense
        self.kind = "seq2seq" if dense else "scalar"
        self.calls, self.nan_at_call = 0, nan_at_call

    def token_rewards(self, prompts, ids, mask):
        self.calls += 1
        hit = ((ids == self.target) & mask).float()
        if self.dense:
            r = hit
        else:
            r = torch.zeros_like(hit)
            last = mask.long().sum(-1) - 1
            r[torch.arange(len(r)), last] = hit.sum(-1)
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            r = r + float("nan")
        return TokenRewards(rewards=r, mask=mask)


class EvenTokenRM(CountTokenRM):
    """+1 for every even token id: a dense reward that is non-zero even for a random policy."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, target=-1, dense=True)

    def token_rewards(self, prompts, ids, mask):
        return TokenRewards(rewards=((ids % 2 == 0) & mask).float(), mask=mask)


PROMPTS = ["What is two plus two?", "How do I fix a bike tyre?", "Name a colour.", "Say hello.",
           "What is the capital of France?", "How can I sleep better?", "Tell me a fact.", "Count to three."]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "p.jsonl", [{"prompt": p} for p in PROMPTS])


def make_cfg(policy, prompts, out, **kw) -> PPOConfig:
    base = dict(policy=policy, prompts=prompts, out=str(out), steps=4, batch_size=8, mini_batch_size=4,
                ppo_epochs=1, actor_lr=1e-3, critic_lr=1e-3, kl_coef=0.0, save_every=2, sample_every=2,
                sampling=SamplingConfig(max_new_tokens=6))
    base.update(kw)
    return PPOConfig(**base)


def first_token_logprobs(policy_dir, tokenizer) -> torch.Tensor:
    """(V,) mean log-prob of each token as the first response token, over the prompts: one unpadded
    forward pass per prompt, so nothing is shared with the PPO code under test."""
    from seq2seq_rm.data.templates import render_prompt

    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    rows = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tokenizer(render_prompt(p, TemplateConfig(), tokenizer), add_special_tokens=False).input_ids
            rows.append(torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1))
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("dense", [True, False], ids=["token-level reward", "scalar reward"])
def test_ppo_raises_the_probability_of_the_rewarded_token(sft_policy_dir, prompts_file, tmp_path, dense):
    tok = load_tokenizer(sft_policy_dir)
    before = first_token_logprobs(sft_policy_dir, tok)
    target = int(before.argsort(descending=True)[0])  # the policy's likeliest first token, still far from certain
    assert before[target].exp() < 0.5
    cfg = make_cfg(sft_policy_dir, prompts_file, tmp_path / "ppo", steps=8, ppo_epochs=2, save_every=0,
                   batch_size=16, sampling=SamplingConfig(max_new_tokens=3))
    out = PPOTrainer(cfg, reward_model=CountTokenRM(tok, target, dense)).train()
    after = first_token_logprobs(str(out), tok)
    assert after[target] > before[target] + 0.5, (before[target], after[target])
    metrics = [json.loads(x) for x in (tmp_path / "ppo.run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    rewards = [m["rm_reward"] for m in metrics]
    assert sum(rewards[4:]) > sum(rewards[:4]), rewards  # the rewarded token is sampled more often
    assert json.loads((out / "policy.json").read_text())["stage"] == "ppo"


def _weights(folder, file=False):
    from safetensors.torch import load_file

    return load_file(str(folder) if file else os.path.join(folder, "model.safetensors"))


def test_resume_continues_as_if_never_stopped(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    target = tok(" is", add_special_tokens=False).input_ids[0]
    rm = CountTokenRM(tok, target, dense=True)
    straight = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "a"), reward_model=rm).train()
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "b", steps=2), reward_model=rm).train()
    resumed = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "b", resume=True), reward_model=rm)
    assert resumed.step == 0
    resumed.train()
    a, b = _weights(straight), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    rows = (tmp_path / "b.run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]  # no duplicated steps after resume


def test_ctrl_c_saves_a_checkpoint_then_stops(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    trainer = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=5, save_every=0),
                         reward_model=CountTokenRM(tok, 5, dense=True))
    original = trainer.rollout

    def rollout_then_interrupt(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of step 2
        return original(step)

    trainer.rollout = rollout_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    ckpts = sorted(p.name for p in (tmp_path / "p.run" / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]  # the step in progress finished, then it saved
    assert not (tmp_path / "p").exists()  # no final policy: the run is not done
    again = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=5, save_every=0, resume=True),
                       reward_model=CountTokenRM(tok, 5, dense=True))
    again.load_checkpoint()
    assert again.step == 2


def test_nan_rewards_stop_the_run_and_keep_the_last_good_checkpoint(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rm = CountTokenRM(tok, 5, dense=True, nan_at_call=4)
    trainer = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "n", steps=6), reward_model=rm)
    with pytest.raises(Seq2SeqRMError, match=r"step 4: non-finite reward.*last good checkpoint is .*step-000002"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "n.run" / "checkpoints").iterdir()) == ["step-000002"]


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    import safetensors.torch

    tok = load_tokenizer(tiny_model_dir)
    trainer = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "d", steps=4),
                         reward_model=CountTokenRM(tok, 5, dense=True))
    real = safetensors.torch.save_model
    calls = {"n": 0}

    def disk_full(model, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # the critic of the second checkpoint
            raise OSError(28, "No space left on device")
        return real(model, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_model", disk_full)
    with pytest.raises(OSError, match="No space"):
        trainer.train()
    ckpt_dir = tmp_path / "d.run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000002"]  # no temp folder left either
    state = json.loads((ckpt_dir / "step-000002" / "state.json").read_text())
    assert state["step"] == 2


def test_reward_model_with_another_tokenizer_is_refused(tiny_model_dir, prompts_file, tmp_path):
    from seq2seq_rm.models.tiny import build_tiny_model

    other = build_tiny_model(["completely different corpus " * 3, "zebra quartz"] * 10, str(tmp_path / "other"))
    rm = CountTokenRM(load_tokenizer(other), 5, dense=True)
    with pytest.raises(ConfigError, match="tokenizer"):
        PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "x"), reward_model=rm)


def test_over_long_and_empty_prompts_are_counted(tiny_model_dir, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}, {"prompt": " "}, {"prompt": "word " * 400}])
    tok = load_tokenizer(tiny_model_dir)
    trainer = PPOTrainer(make_cfg(tiny_model_dir, f, tmp_path / "x"), reward_model=CountTokenRM(tok, 5, True))
    assert trainer.prompts == ["Hi"]
    skipped = trainer.prompt_report.skipped
    assert sum(skipped.values()) == 2 and any("max_prompt_length" in k for k in skipped)
    bad = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "word " * 400}])
    with pytest.raises(Seq2SeqRMError, match="no usable prompts"):
        PPOTrainer(make_cfg(tiny_model_dir, bad, tmp_path / "y"), reward_model=CountTokenRM(tok, 5, True))


def test_ppo_command_with_a_real_seq2seq_rm(tiny_model_dir, seq2seq_rm_dir, prompts_file, tmp_path):
    from seq2seq_rm.cli import main

    out = tmp_path / "policy"
    code = main(["ppo", "--policy", tiny_model_dir, "--rm", seq2seq_rm_dir, "--prompts", prompts_file,
                 "--out", str(out), "--steps", "2", "batch_size=4", "mini_batch_size=2",
                 "sampling.max_new_tokens=8", "sample_every=1", "critic_init=rm"])
    assert code == 0
    AutoModelForCausalLM.from_pretrained(out)
    samples = json.loads((tmp_path / "policy.run" / "samples" / "step-000002.json").read_text())
    assert len(samples[0]["tokens"]) == len(samples[0]["rm_rewards"]) > 0
    for row in samples:  # the seq2seq RM's constant-magnitude rewards; a response cut at max_new_tokens
        *body, last = row["rm_rewards"]  # also carries, on its last token, the reward of the EOS it lacks
        assert set(body) <= {1.0, 0.0, -1.0} and last in {2.0, 1.0, 0.0, -1.0, -2.0}
    assert list((tmp_path / "policy.run" / "tensorboard").iterdir())


def test_lora_actor_and_critic_with_bf16_autocast(tiny_model_dir, prompts_file, tmp_path):
    from peft import PeftModel

    tok = load_tokenizer(tiny_model_dir)
    cfg = make_cfg(tiny_model_dir, prompts_file, tmp_path / "lora", steps=2, save_every=1, bf16=True)
    cfg.actor_lora.enabled = True
    cfg.critic_lora.enabled = True
    trainer = PPOTrainer(cfg, reward_model=EvenTokenRM(tok))
    actor = trainer.acc.unwrap_model(trainer.actor)
    assert isinstance(actor, PeftModel)
    trainable = {n for n, p in actor.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters train
    out = trainer.train()
    assert not (out / "adapter_config.json").exists()  # the saved policy is merged into plain weights
    merged, base = _weights(out), _weights(tiny_model_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged[key].shape == base[key].shape and not torch.equal(merged[key], base[key])
    # a LoRA run resumes too
    again = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "lora", steps=3, bf16=True, resume=True,
                                actor_lora=cfg.actor_lora, critic_lora=cfg.critic_lora),
                       reward_model=EvenTokenRM(tok))
    again.load_checkpoint()
    assert again.step == 2


def test_a_fresh_run_refuses_an_earlier_run_folder_unless_told(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rm = CountTokenRM(tok, 5, dense=True)
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=2), reward_model=rm).train()
    run = tmp_path / "p.run"
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="holds an earlier run.*--resume.*--overwrite"):
        PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=3), reward_model=rm)
    assert (run / "metrics.jsonl").read_text() == before  # nothing was mixed or wiped
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=1, overwrite=True), reward_model=rm).train()
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]  # the old run is gone


def test_resume_applies_a_changed_learning_rate_and_refuses_other_changes(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rm = CountTokenRM(tok, 5, dense=True)
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=2), reward_model=rm).train()
    with pytest.raises(ConfigError, match=r"kl_coef: 0.0 in the checkpoint, 0.5 now; seed: 0 in the checkpoint, 7 now"):
        PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=4, resume=True, seed=7, kl_coef=0.5),
                   reward_model=rm).load_checkpoint()
    again = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=3, resume=True, actor_lr=5e-4),
                       reward_model=rm)
    again.train()
    assert [g["lr"] for g in again.opt_a.param_groups] == [5e-4]  # in force, not the checkpoint's 1e-3
    assert [g["lr"] for g in again.opt_c.param_groups] == [1e-3]
    assert json.loads((tmp_path / "p.run" / "config.json").read_text())["actor_lr"] == 5e-4


def test_an_exploding_update_is_never_saved_as_a_good_checkpoint(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rm = EvenTokenRM(tok)
    one_update = dict(mini_batch_size=8, save_every=1)  # one optimiser step per PPO step: finite, huge weights
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=2, **one_update), reward_model=rm).train()
    good = _weights(tmp_path / "p.run" / "checkpoints" / "step-000002" / "actor.safetensors", file=True)
    boom = PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=4, resume=True, actor_lr=1e30,
                               **one_update), reward_model=rm)
    with pytest.raises(Seq2SeqRMError, match=r"step 3: the actor update diverged.*last good checkpoint is .*step-000002"):
        boom.train()
    ckpts = tmp_path / "p.run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001", "step-000002"]
    kept = _weights(ckpts / "step-000002" / "actor.safetensors", file=True)
    assert all(torch.equal(kept[k], good[k]) for k in good) and max(v.abs().max() for v in kept.values()) < 100


def test_a_damaged_checkpoint_stops_resume_with_a_clear_message(tiny_model_dir, prompts_file, tmp_path, caplog):
    tok = load_tokenizer(tiny_model_dir)
    rm = CountTokenRM(tok, 5, dense=True)
    PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=2), reward_model=rm).train()
    (tmp_path / "p.run" / "checkpoints" / "step-000002" / "optim.pt").write_bytes(b"\x80garbage")
    with pytest.raises(Seq2SeqRMError, match=r"checkpoint .*step-000002 is damaged.*move that folder away"):
        PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=3, resume=True),
                   reward_model=rm).load_checkpoint()


def test_extraction_options_of_a_run_are_applied_and_recorded(tiny_model_dir, seq2seq_rm_dir, scalar_rm_dir,
                                                              prompts_file, tmp_path):
    from seq2seq_rm.config import ExtractionConfig

    rule = ExtractionConfig(rematch="positive", magnitude="prob")
    cfg = make_cfg(tiny_model_dir, prompts_file, tmp_path / "p", steps=1, rm=seq2seq_rm_dir, extraction=rule,
                   batch_size=4, mini_batch_size=2)
    trainer = PPOTrainer(cfg)
    assert trainer.rm.extraction == rule  # not the RM folder's own (rematch=zero, constant)
    out = trainer.train()
    assert json.loads((tmp_path / "p.run" / "config.json").read_text())["extraction"]["rematch"] == "positive"
    assert json.loads((out / "policy.json").read_text())["extraction"]["magnitude"] == "prob"
    with pytest.raises(ConfigError, match="apply to a seq2seq RM"):
        PPOTrainer(make_cfg(tiny_model_dir, prompts_file, tmp_path / "s", rm=scalar_rm_dir, extraction=rule))
