"""Precision and memory: the `dtype` option on every stage, gradient checkpointing, and the LoRA
reference policy that is the actor's own base (no second copy)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import EvenTokenRM, train_options, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from seq2seq_rm.config import LoraOptions, RMTrainConfig, load_config
from seq2seq_rm.errors import ConfigError
from seq2seq_rm.rl.ppo import PPOConfig, PPOTrainer, enable_checkpointing
from seq2seq_rm.rl.rollout import SamplingConfig
from seq2seq_rm.sft import SFTRunConfig

LORA = LoraOptions(enabled=True, r=4, alpha=8)
PROMPTS = ["What is two plus two?", "How do I fix a bike tyre?", "Name a colour.", "Say hello."]


# ------------------------------------------------------------------------------- config-read refusals


@pytest.mark.parametrize("build, message", [
    (lambda: SFTRunConfig(dtype="bfloat16"), "full-parameter training of the policy.*LoRA"),
    (lambda: RMTrainConfig(kind="scalar", dtype="float16"), "full-parameter training of the scalar RM"),
    (lambda: PPOConfig(dtype="bfloat16", actor_lora=LORA), "full-parameter training of the critic"),
    (lambda: PPOConfig(dtype="float16", actor_lora=LORA, critic_lora=LORA), "loss scaling"),
    (lambda: load_config(SFTRunConfig, None, ["dtype=bf16"]), "did you mean 'bfloat16'"),
], ids=["sft-bf16-full", "rm-fp16-full", "ppo-critic-full", "ppo-fp16", "typo"])
def test_precision_that_would_not_train_is_refused_when_the_config_is_read(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_float16_training_is_refused_on_cpu_and_mixed_half_formats_everywhere(monkeypatch):
    import seq2seq_rm.config as config

    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="GradScaler.*CUDA only"):
        SFTRunConfig(dtype="float16", train=train_options(lora=LORA))
    monkeypatch.setattr(config, "_cuda_available", lambda: True)
    SFTRunConfig(dtype="float16", train=train_options(lora=LORA))  # CUDA: the Trainer's fp16 + GradScaler path
    with pytest.raises(ConfigError, match="two half-precision formats"):
        SFTRunConfig(dtype="float16", train=train_options(lora=LORA, bf16=True))


def test_half_precision_with_lora_everywhere_is_accepted():
    SFTRunConfig(dtype="bfloat16", train=train_options(lora=LORA, gradient_checkpointing=True))
    RMTrainConfig(dtype="bfloat16", train=train_options(lora=LORA))
    PPOConfig(dtype="bfloat16", actor_lora=LORA, critic_lora=LORA, bf16=True, gradient_checkpointing=True)


def test_experiment_dtype_applies_to_every_stage():
    from seq2seq_rm.experiment import ExperimentConfig

    with pytest.raises(ConfigError, match="sft: dtype=bfloat16 with full-parameter training"):
        load_config(ExperimentConfig, None, ["dtype=bfloat16"])
    lora = ["sft.lora.enabled=true", "rm.lora.enabled=true", "ppo.actor_lora.enabled=true"]
    with pytest.raises(ConfigError, match="ppo: dtype=bfloat16 with full-parameter training of the critic"):
        load_config(ExperimentConfig, None, ["dtype=bfloat16", *lora])
    cfg = load_config(ExperimentConfig, None, ["dtype=bfloat16", *lora, "ppo.critic_lora.enabled=true"])
    assert cfg.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="ppo.dtype: the experiment's own `dtype`"):
        load_config(ExperimentConfig, None, ["ppo.dtype=bfloat16", *lora, "ppo.critic_lora.enabled=true"])


def test_cli_dtype_flags(tiny_model_dir, tmp_path, capsys):
    from seq2seq_rm.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "response": "ok"} for p in PROMPTS])
    assert main(["sft", "--model", tiny_model_dir, "--data", data, "--out", str(tmp_path / "o"),
                 "--dtype", "bfloat16"]) == 2
    assert "full-parameter training" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    rows = write_jsonl(tmp_path / "r.jsonl", [{"prompt": p, "response": "ok"} for p in PROMPTS])
    assert main(["eval", "--a", rows, "--b", rows, "--judge", "oracle:safety", "--out", str(tmp_path / "e"),
                 "--dtype", "bfloat16"]) == 2
    assert "--dtype applies to hf:PATH judges" in capsys.readouterr().err


# ------------------------------------------------------------------------------- loading in a dtype


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in bfloat16: its config records dtype=bfloat16."""
    from seq2seq_rm.models.loading import load_tokenizer

    out = tmp_path_factory.mktemp("bf16") / "tiny-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return str(out)


def test_models_load_in_the_asked_dtype_and_auto_reads_the_checkpoint(tiny_model_dir, bf16_checkpoint):
    from seq2seq_rm.models.loading import load_causal_lm, resolve_dtype
    from seq2seq_rm.models.value import ValueModel

    assert resolve_dtype("auto", bf16_checkpoint) == torch.bfloat16
    assert resolve_dtype("auto", tiny_model_dir) == torch.float32
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    stored = load_file(f"{tiny_model_dir}/model.safetensors")  # float32
    for dtype in ("bfloat16", torch.bfloat16):
        model = load_causal_lm(tiny_model_dir, dtype=dtype).eval()
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        for name, p in model.named_parameters():  # the checkpoint's numbers, rounded to bfloat16
            assert torch.equal(p, stored[name].to(torch.bfloat16)), name
        assert model(ids).logits.dtype == torch.bfloat16
    assert load_causal_lm(bf16_checkpoint, dtype="auto").dtype == torch.bfloat16
    assert load_causal_lm(bf16_checkpoint).dtype == torch.float32  # the default keeps today's behaviour
    critic = ValueModel.from_folder(tiny_model_dir, dtype="bfloat16")
    assert critic.backbone.dtype == torch.bfloat16 and critic.v_head.weight.dtype == torch.float32
    assert critic(ids).dtype == torch.float32


def test_auto_resolving_to_bf16_full_training_stops_before_any_work(bf16_checkpoint, tmp_path):
    from seq2seq_rm.sft import train_sft

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "response": "ok"} for p in PROMPTS])
    with pytest.raises(ConfigError, match="dtype=auto resolved to bfloat16.*full-parameter"):
        train_sft(SFTRunConfig(model=bf16_checkpoint, data=data, out=str(tmp_path / "o"), dtype="auto"))
    assert not (tmp_path / "o").exists()


def test_generate_and_hf_judge_use_the_dtype_and_eval_records_it(tiny_model_dir, tmp_path, monkeypatch):
    import seq2seq_rm.models.loading as loading
    from seq2seq_rm.eval.compare import evaluate_files
    from seq2seq_rm.eval.judges import HFJudge
    from seq2seq_rm.rl.rollout import generate_to_file

    loaded = []
    original = loading.load_causal_lm

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append(model.dtype)
        return model

    monkeypatch.setattr(loading, "load_causal_lm", spy)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "g.jsonl"
    assert generate_to_file(tiny_model_dir, prompts, out, SamplingConfig(max_new_tokens=4, do_sample=False),
                            dtype="bfloat16") == len(PROMPTS)
    assert loaded == [torch.bfloat16]
    with pytest.raises(ConfigError, match="--dtype applies to the hf engine"):
        generate_to_file(tiny_model_dir, prompts, tmp_path / "v.jsonl", SamplingConfig(), engine="vllm",
                         dtype="bfloat16")
    judge = HFJudge(tiny_model_dir, dtype="bfloat16")
    assert judge.model.dtype == torch.bfloat16 and judge.dtype == "bfloat16"
    evaluate_files(out, out, judge, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["judge_dtype"] == "bfloat16"


# ------------------------------------------------------------------------------- supervised stages


def _layer0_calls(model) -> list:
    """Counts the calls of the first decoder layer's attention: with activation checkpointing the
    backward pass runs the layer's body a second time (the recomputation). A pre-hook inside the
    layer: transformers checkpoints the layer's ``forward`` (hooks on the layer itself run once), and
    torch stops a recomputation early, once it has what the backward needs."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    calls = []
    layers = base.model.layers if hasattr(base, "model") else base.layers
    layers[0].self_attn.register_forward_pre_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    return calls


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_in_bf16_with_lora_records_the_dtype_and_checkpoints_activations(tiny_model_dir, tmp_path, checkpointing):
    from seq2seq_rm.models.loading import load_tokenizer
    from seq2seq_rm.sft import build_sft_trainer, load_sft_records

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "response": "Sure, here it is."} for p in PROMPTS * 2])
    cfg = SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path / "o"), dtype="bfloat16",
                       train=train_options(batch_size=8, lr=1e-2, warmup_ratio=0.0, lora=LORA,
                                           gradient_checkpointing=checkpointing))
    records = load_sft_records(cfg)[0]
    trainer, _ = build_sft_trainer(cfg, records, load_tokenizer(tiny_model_dir), tmp_path / "o")
    assert trainer.args.gradient_checkpointing is checkpointing  # (an alias of activation_checkpointing in 5.23)
    calls = _layer0_calls(trainer.model)
    trainer.train()  # one optimisation step of 8 examples
    assert len(calls) == (2 if checkpointing else 1), calls
    model = trainer.model
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in trained.values()} == {torch.float32}  # adapters: float32
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # the base: bfloat16
    # Merging keeps the whole update: merged = bf16 base (exactly, in float32) + B @ A * alpha / r.
    from seq2seq_rm.models.lora import merge_lora

    q = model.get_base_model().model.layers[0].self_attn.q_proj
    expected = q.base_layer.weight.float() + (q.lora_B["default"].weight @ q.lora_A["default"].weight) * LORA.alpha / LORA.r
    merged = merge_lora(model).model.layers[0].self_attn.q_proj.weight
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, expected.detach(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_mixed_precision_trains_under_autocast_over_float32_weights(tiny_model_dir, tmp_path, bf16):
    from seq2seq_rm.models.loading import load_tokenizer
    from seq2seq_rm.sft import build_sft_trainer, load_sft_records

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "response": "Sure, here it is."} for p in PROMPTS * 2])
    cfg = SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path / "o"), train=train_options(batch_size=8,
                                                                                                      bf16=bf16))
    trainer, _ = build_sft_trainer(cfg, load_sft_records(cfg)[0], load_tokenizer(tiny_model_dir), tmp_path / "o")
    seen = []
    layer = trainer.model.model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if torch.is_grad_enabled() else None)
    trainer.train()
    assert seen == [torch.bfloat16 if bf16 else torch.float32]  # the matmuls ran in bf16...
    assert layer.weight.dtype == torch.float32  # ...over float32 weights


def test_sft_and_scalar_rm_outputs_record_their_dtype(tiny_model_dir, tmp_path):
    from seq2seq_rm.rewards.train import build_trainer, train_reward_model
    from seq2seq_rm.sft import train_sft

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "response": "Sure, here it is."} for p in PROMPTS * 2])
    out = train_sft(SFTRunConfig(model=tiny_model_dir, data=data, out=str(tmp_path / "sft"), dtype="bfloat16",
                                 train=train_options(batch_size=8, lr=1e-2, warmup_ratio=0.0, lora=LORA)))
    meta = json.loads((out / "sft.json").read_text())
    assert (meta["dtype"], meta["saved_dtype"]) == ("bfloat16", "float32")  # LoRA merged in float32
    saved, base = load_file(str(out / "model.safetensors")), load_file(f"{tiny_model_dir}/model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert saved[key].dtype == torch.float32 and not torch.equal(saved[key], base[key].to(torch.bfloat16).float())

    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "chosen": "Sure, here it is.", "rejected": "No."}
                                               for p in PROMPTS * 2])
    cfg = RMTrainConfig(kind="scalar", model=tiny_model_dir, data=pairs, out=str(tmp_path / "rm"), dtype="bfloat16",
                        train=train_options(batch_size=8, lora=LORA))
    from seq2seq_rm.data.loading import load_preferences
    from seq2seq_rm.models.loading import load_tokenizer

    trainer, _ = build_trainer(cfg, load_preferences(pairs)[0], load_tokenizer(tiny_model_dir), tmp_path / "t")
    score = {n: p for n, p in trainer.model.named_parameters() if "score" in n and p.requires_grad}
    assert score and all(p.dtype == torch.float32 for p in score.values())  # a head trained in full: float32
    rm = train_reward_model(cfg)
    assert json.loads((rm / "seq2seq_rm.json").read_text())["dtype"] == "bfloat16"


# ------------------------------------------------------------------------------- PPO


def test_checkpointing_gives_the_same_gradients_for_actor_lora_actor_and_critic(tiny_model_dir):
    """Gradients with activation checkpointing equal those without (the recomputation is exact), and
    the recomputation really happens (the first layer runs twice)."""
    from seq2seq_rm.models.loading import load_causal_lm
    from seq2seq_rm.models.lora import apply_lora
    from seq2seq_rm.models.value import ValueModel

    ids = torch.tensor([[5, 9, 14, 3, 7, 21, 2], [8, 8, 30, 11, 4, 6, 19]])

    def build(kind):
        torch.manual_seed(0)
        if kind == "critic":
            critic = ValueModel.from_folder(tiny_model_dir)
            torch.nn.init.normal_(critic.v_head.weight)  # a zero head (the default) sends no gradient back
            return critic
        model = load_causal_lm(tiny_model_dir)
        if kind == "lora":
            model = apply_lora(model, 4, 8)
            with torch.no_grad():  # non-zero B: every adapter gets a gradient
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
        return model

    def grads(kind, checkpointing):
        model = build(kind).train()
        if checkpointing:
            enable_checkpointing(model.backbone if kind == "critic" else model)
        calls = _layer0_calls(model.backbone if kind == "critic" else model)
        out = model(input_ids=ids)
        loss = (out if kind == "critic" else out.logits.log_softmax(-1)[..., 3]).square().mean()
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for kind in ("full", "lora", "critic"):
        plain, checkpointed = grads(kind, False), grads(kind, True)
        assert plain.keys() == checkpointed.keys() and plain
        for n in plain:
            assert plain[n].abs().sum() > 0, (kind, n)
            torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-7, msg=f"{kind} {n}")




def _ppo_cfg(policy, prompts, out, **kw) -> PPOConfig:
    base = dict(policy=policy, prompts=prompts, out=str(out), steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                actor_lr=3e-2, critic_lr=1e-3, kl_coef=0.1, save_every=1, sample_every=0,
                sampling=SamplingConfig(max_new_tokens=6), actor_lora=LORA, critic_lora=LORA)
    return PPOConfig(**{**base, **kw})


def _unpadded_logprobs(model, b, i) -> torch.Tensor:
    """log p(y_t | x, y_<t) of row ``i``'s response tokens: one forward pass over the unpadded
    prompt + response, nothing shared with the PPO code under test."""
    prompt = b.prompt_ids[i][b.prompt_mask[i].bool()]
    response = b.response_ids[i][b.response_mask[i].bool()]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, response])[None]).logits[0].float()
    logp = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return logp.gather(-1, response[:, None])[:, 0]


def test_lora_reference_is_the_actors_base_not_a_copy(tiny_model_dir, tmp_path):
    from seq2seq_rm.models.loading import load_tokenizer

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    trainer = PPOTrainer(_ppo_cfg(tiny_model_dir, prompts, tmp_path / "ppo"),
                         reward_model=EvenTokenRM(load_tokenizer(tiny_model_dir)))
    # No reference module is held: every parameter the trainer holds belongs to the actor or the critic.
    assert trainer.ref is None
    held = {id(p) for m in vars(trainer).values() if isinstance(m, torch.nn.Module) for p in m.parameters()}
    assert held == {id(p) for m in (trainer.actor, trainer.critic) for p in m.parameters()}

    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # the SFT policy, loaded separately
    b = trainer.rollout(0)
    trainer.rewards(b)
    trainer.shape(b)
    for i in range(len(b.prompts)):
        n = int(b.response_mask[i].sum())
        torch.testing.assert_close(b.ref_logp[i, :n], _unpadded_logprobs(sft, b, i), rtol=0, atol=2e-6)
    trainer.update(b)  # the adapters change...
    trainer.shape(b)
    mask = b.response_mask.bool()
    assert (b.logp - b.ref_logp)[mask].abs().max() > 1e-3  # ...so the actor moved away from the reference
    for i in range(len(b.prompts)):  # ...and the reference did not
        n = int(b.response_mask[i].sum())
        torch.testing.assert_close(b.ref_logp[i, :n], _unpadded_logprobs(sft, b, i), rtol=0, atol=2e-6)


def test_bf16_lora_checkpointed_ppo_records_dtype_and_resumes_exactly(tiny_model_dir, seq2seq_rm_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    kw = dict(rm=seq2seq_rm_dir, dtype="bfloat16", gradient_checkpointing=True, steps=4, save_every=2)
    straight = PPOTrainer(_ppo_cfg(tiny_model_dir, prompts, tmp_path / "a", **kw))
    assert straight.rm.model.dtype == torch.bfloat16  # every role in the dtype: RM...
    actor = straight.acc.unwrap_model(straight.actor)
    assert {p.dtype for p in actor.parameters() if not p.requires_grad} == {torch.bfloat16}  # ...actor base...
    assert {p.dtype for p in actor.parameters() if p.requires_grad} == {torch.float32}  # (adapters train in fp32)
    critic = straight.acc.unwrap_model(straight.critic)
    assert critic.backbone.get_base_model().dtype == torch.bfloat16  # ...critic backbone
    for model in (actor.get_base_model(), critic.backbone.get_base_model()):  # checkpointing on, in either name
        assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    out = straight.train()
    meta = json.loads((out / "policy.json").read_text())
    assert (meta["dtype"], meta["saved_dtype"]) == ("bfloat16", "float32")  # the adapters merged in float32
    assert json.loads((tmp_path / "a.run" / "config.json").read_text())["dtype"] == "bfloat16"
    PPOTrainer(_ppo_cfg(tiny_model_dir, prompts, tmp_path / "b", **{**kw, "steps": 2})).train()
    PPOTrainer(_ppo_cfg(tiny_model_dir, prompts, tmp_path / "b", **kw, resume=True)).train()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and {v.dtype for v in a.values()} == {torch.float32}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ConfigError, match="dtype"):  # a resumed run keeps its dtype
        PPOTrainer(_ppo_cfg(tiny_model_dir, prompts, tmp_path / "b", **{**kw, "dtype": "float32", "steps": 5},
                            resume=True)).train()
