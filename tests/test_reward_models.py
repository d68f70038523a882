"""Building training examples, training either RM kind, the scalar interface, RM evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import train_options, write_jsonl
from transformers import AutoModelForCausalLM

from seq2seq_rm.config import MappingConfig, RMTrainConfig, TemplateConfig
from seq2seq_rm.data.records import PreferenceRecord
from seq2seq_rm.errors import ConfigError, DataError, Seq2SeqRMError
from seq2seq_rm.layout import fit_to_length
from seq2seq_rm.models.loading import load_tokenizer
from seq2seq_rm.rewards import load_reward_model
from seq2seq_rm.rewards.base import TokenRewards, encode_responses
from seq2seq_rm.rewards.evaluate import evaluate_pairs
from seq2seq_rm.rewards.scalar import build_pair_examples
from seq2seq_rm.rewards.seq2seq import build_seq2seq_examples
from seq2seq_rm.rewards.train import build_trainer, train_reward_model

PLAIN = TemplateConfig(style="plain")
REC = PreferenceRecord(prompt="What is two plus two?", chosen="Two plus two is four.", rejected="It is five.")


def test_correction_and_identity_examples_have_the_paper_layout(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ex, stats = build_seq2seq_examples([REC], tok, PLAIN, MappingConfig(), max_length=256)
    assert [e["mapping"] for e in ex] == ["correction", "identity"]
    assert stats.correction == 1 and stats.identity == 1
    for e, shown in zip(ex, ["It is five.", "Two plus two is four."], strict=True):
        src = [i for i, m in zip(e["input_ids"], e["completion_mask"], strict=True) if not m]
        tgt = [i for i, m in zip(e["input_ids"], e["completion_mask"], strict=True) if m]
        assert tok.decode(src) == f"Prompt:\nWhat is two plus two?\n\nResponse:\n{shown}\n\nImproved response:\n"
        assert tok.decode(tgt) == "Two plus two is four.<|im_end|>"  # target is always the chosen response + EOS
        assert e["completion_mask"] == sorted(e["completion_mask"])  # source first, then target


def test_identity_ratio_sets_the_mapping_mix(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    recs = [REC] * 200
    ex, stats = build_seq2seq_examples(recs, tok, PLAIN, MappingConfig(identity_ratio=0.5), 256, seed=3)
    assert stats.correction == 200 and 70 < stats.identity < 130
    ex, stats = build_seq2seq_examples(recs, tok, PLAIN, MappingConfig(correction=False, identity_ratio=2.0), 256)
    assert stats.correction == 0 and stats.identity == 400
    with pytest.raises(ConfigError):
        build_seq2seq_examples(recs, tok, PLAIN, MappingConfig(correction=False, identity_ratio=0.0), 256)


def test_length_policy_truncates_source_from_the_left_or_skips():
    src, tgt, status = fit_to_length(list(range(20)), [100, 101, 102], 15, "truncate")
    assert status == "truncated" and tgt == [100, 101, 102] and src == list(range(8, 20))
    assert fit_to_length(list(range(20)), [1], 15, "skip") == (None, None, "skipped")
    src, tgt, status = fit_to_length([1, 2], list(range(30)), 16, "truncate")  # target alone too long
    assert src == [1, 2] and tgt == list(range(14))
    src, tgt, _ = fit_to_length(list(range(10)), list(range(30)), 16, "truncate")
    assert src == list(range(2, 10)) and tgt == list(range(8))  # the source keeps its last 8 tokens
    assert fit_to_length([1], [2], 5, "skip")[2] == "ok"


def test_over_long_examples_are_counted_not_silently_dropped(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    long = PreferenceRecord(prompt="word " * 200, chosen="yes", rejected="no")
    ex, stats = build_seq2seq_examples([REC, long], tok, PLAIN, MappingConfig(), 64, "skip")
    assert stats.skipped_too_long == 2 and len(ex) == 2
    ex, stats = build_pair_examples([REC, long], tok, PLAIN, 64, "truncate")
    assert stats.truncated == 1 and all(len(e["chosen_ids"]) <= 64 for e in ex)
    with pytest.raises(Seq2SeqRMError, match="max_length"):
        build_seq2seq_examples([long], tok, PLAIN, MappingConfig(), 64, "skip")


def _cfg(kind, model, data, out, **kw):
    return RMTrainConfig(
        kind=kind, model=model, data=data, out=str(out),
        train=train_options(batch_size=8, max_length=128, logging_steps=1, **kw),
    )


def test_seq2seq_trainer_puts_loss_on_target_tokens_only(tiny_model_dir, sample_file, tmp_path):
    cfg = _cfg("seq2seq", tiny_model_dir, sample_file, tmp_path / "x")
    tok = load_tokenizer(tiny_model_dir)
    trainer, _ = build_trainer(cfg, [REC], tok, tmp_path)
    row = trainer.train_dataset[0]
    tok_ids, labels = row["input_ids"], row["labels"]
    target = [i for i, lab in zip(tok_ids, labels, strict=True) if lab != -100]
    assert tok.decode(target) == "Two plus two is four.<|im_end|>"
    assert labels[: len(tok_ids) - len(target)] == [-100] * (len(tok_ids) - len(target))


def test_trained_folders_load_and_record_their_layout(seq2seq_rm_dir, scalar_rm_dir):
    for folder, kind in ((seq2seq_rm_dir, "seq2seq"), (scalar_rm_dir, "scalar")):
        meta = json.loads((Path(folder) / "seq2seq_rm.json").read_text())
        assert meta["kind"] == kind
        assert meta["template"]["style"] == "auto" and "magnitude" in meta["extraction"]
        assert meta["data"]["kept"] == 120 and meta["final_loss"] is not None
        assert (Path(folder) / "model.safetensors").is_file()
        assert not list(Path(folder).parent.glob(".*tmp*"))  # the temporary folder was renamed, not left
    AutoModelForCausalLM.from_pretrained(seq2seq_rm_dir)  # a normal save_pretrained folder
    assert load_reward_model(seq2seq_rm_dir).kind == "seq2seq"


def test_failed_training_leaves_the_earlier_output_untouched(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}, {"prompt": "x"}])
    out = tmp_path / "rm"
    out.mkdir()
    (out / "seq2seq_rm.json").write_text('{"kind": "scalar"}')  # an earlier RM, replaced only with overwrite
    (out / "keep.txt").write_text("previous run")
    cfg = _cfg("seq2seq", tiny_model_dir, bad, out)
    with pytest.raises(ConfigError, match="--overwrite"):
        train_reward_model(cfg)
    cfg.overwrite = True
    cfg.strict_data = True  # a row-level problem is an error only in strict mode (else a counted skip)
    with pytest.raises(DataError, match="row 2"):
        train_reward_model(cfg)
    assert (out / "keep.txt").read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "rm"]


def test_training_lowers_the_loss_and_changes_weights(seq2seq_rm_dir, tiny_model_dir):
    meta = json.loads((Path(seq2seq_rm_dir) / "seq2seq_rm.json").read_text())
    curve = [loss for _, loss in meta["loss_curve"]]
    assert len(curve) >= 5 and curve[-1] < 0.8 * curve[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(seq2seq_rm_dir)
    assert not torch.equal(base.model.embed_tokens.weight, trained.model.embed_tokens.weight)


def test_lora_training_saves_a_merged_plain_model(tiny_model_dir, sample_file, tmp_path):
    cfg = _cfg("seq2seq", tiny_model_dir, sample_file, tmp_path / "lora")
    cfg.train.lora.enabled = True
    cfg.limit = 16
    out = train_reward_model(cfg)
    assert not (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(out)
    w0 = base.model.layers[0].self_attn.q_proj.weight
    w1 = merged.model.layers[0].self_attn.q_proj.weight
    assert w0.shape == w1.shape and not torch.equal(w0, w1)


def test_scalar_reward_sits_on_the_last_response_token_and_matches_the_hf_head(scalar_rm_dir):
    rm = load_reward_model(scalar_rm_dir)
    prompts = ["What is two plus two?", "How do I get rid of weeds in my garden?"]
    ids, mask = encode_responses(["Four.", "Pull them by the root after rain."], rm.tokenizer)
    tr = rm.token_rewards(prompts, ids, mask)
    lengths = mask.sum(-1)
    for b in range(2):
        nz = tr.rewards[b].nonzero().flatten().tolist()
        assert nz == [int(lengths[b]) - 1]
    # equals the classification head on the unpadded sequence
    from seq2seq_rm.data.templates import encode_text, render_prompt

    for b in range(2):
        p = encode_text(render_prompt(prompts[b], rm.template, rm.tokenizer), rm.tokenizer, rm.style)
        seq = torch.tensor([p + ids[b, : int(lengths[b])].tolist()])
        with torch.no_grad():
            ref = rm.model(input_ids=seq).logits[0, 0]
        assert tr.rewards[b, int(lengths[b]) - 1].item() == pytest.approx(ref.item(), abs=1e-5)
    # left padding gives the same scores
    left = torch.full_like(ids, rm.tokenizer.pad_token_id)
    lmask = torch.zeros_like(mask)
    for b in range(2):
        n = int(lengths[b])
        left[b, -n:], lmask[b, -n:] = ids[b, :n], True
    tl = rm.token_rewards(prompts, left, lmask)
    assert torch.allclose(tl.sequence_scores("sum"), tr.sequence_scores("sum"), atol=1e-5)


def test_scalar_rm_learns_the_preference(scalar_rm_dir, sample_rows):
    rm = load_reward_model(scalar_rm_dir)
    recs = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in sample_rows[:60]]
    assert evaluate_pairs(rm, recs)["accuracy"] > 0.7


class _LengthRM:
    """A stub RM whose score is the response length: lets accuracy/ties be checked by hand."""

    kind = "scalar"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def token_rewards(self, prompts, ids, mask):
        r = torch.zeros(ids.shape)
        r[:, 0] = mask.sum(-1).float()
        return TokenRewards(rewards=r, mask=mask)


def test_pairwise_accuracy_counts_ties_as_half(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    recs = [
        PreferenceRecord("p", "a long chosen answer", "short"),  # win
        PreferenceRecord("p", "short", "a long rejected answer"),  # loss
        PreferenceRecord("p", "same", "same"),  # tie
        PreferenceRecord("p", "longer one here", "x"),  # win
    ]
    m = evaluate_pairs(_LengthRM(tok), recs, batch_size=3)
    assert m["accuracy"] == pytest.approx((2 + 0.5) / 4)
    assert m["ties"] == pytest.approx(0.25)


def test_pairwise_accuracy_per_group_uses_each_groups_own_pairs(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    recs = [
        PreferenceRecord("p", "a long chosen answer", "short"),  # a: win
        PreferenceRecord("p", "short", "a long rejected answer"),  # b: loss
        PreferenceRecord("p", "same", "same"),  # a: tie
        PreferenceRecord("p", "longer one here", "x"),  # b: win
        PreferenceRecord("p", "x", "longer one here"),  # b: loss
    ]
    m = evaluate_pairs(_LengthRM(tok), recs, batch_size=2,
                       groups={"task": ["a", "b", "a", "b", "b"], "pair": ["x", "x", "y", "y", "y"]})
    assert m["by"]["task"]["a"] == {"accuracy": pytest.approx(0.75), "ties": pytest.approx(0.5), "pairs": 2}
    assert m["by"]["task"]["b"] == {"accuracy": pytest.approx(1 / 3), "ties": 0.0, "pairs": 3}
    assert m["by"]["pair"]["x"] == {"accuracy": pytest.approx(0.5), "ties": 0.0, "pairs": 2}
    assert m["by"]["pair"]["y"] == {"accuracy": pytest.approx(0.5), "ties": pytest.approx(1 / 3), "pairs": 3}
    assert m["accuracy"] == pytest.approx((2 + 0.5) / 5) and "by" not in evaluate_pairs(_LengthRM(tok), recs)
    with pytest.raises(ValueError, match=r"groups\['task'\] has 2 labels for 5 records"):
        evaluate_pairs(_LengthRM(tok), recs, groups={"task": ["a", "b"]})


def test_seq2seq_eval_reports_agreement_on_chosen_and_rejected(seq2seq_rm_dir, sample_rows):
    rm = load_reward_model(seq2seq_rm_dir)
    recs = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in sample_rows[:30]]
    m = evaluate_pairs(rm, recs)
    assert set(m["by_sequence_score"]) == {"mean", "sum", "agree_fraction"}
    assert m["agree_fraction_chosen"] > m["agree_fraction_rejected"]
    assert m["accuracy"] == m["by_sequence_score"]["mean"]["accuracy"]
