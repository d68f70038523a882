"""Token-level reward extraction: the maths, the alignment, and the one-pass shortcut."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from seq2seq_rm.config import ExtractionConfig, TemplateConfig
from seq2seq_rm.layout import pack_right, unpack
from seq2seq_rm.rewards import load_reward_model
from seq2seq_rm.rewards.base import encode_responses
from seq2seq_rm.rewards.seq2seq import Seq2SeqRewardModel, token_rewards_from_logits

# ---------------------------------------------------------------------------------------
# Pure maths on hand-made logits
# ---------------------------------------------------------------------------------------


def one_hot_logits(preferred: list[int], vocab: int = 5, high: float = 4.0) -> torch.Tensor:
    """(1, T, V) logits whose greedy choice at step t is preferred[t]."""
    logits = torch.zeros(1, len(preferred), vocab)
    for t, tok in enumerate(preferred):
        logits[0, t, tok] = high
    return logits


def test_constant_rewards_follow_agreement_with_greedy_choice():
    logits = one_hot_logits([1, 2, 3, 4])
    targets = torch.tensor([[1, 2, 0, 4]])
    mask = torch.ones_like(targets, dtype=torch.bool)
    r, agree, pred = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(rematch="positive"))
    assert r.tolist() == [[1.0, 1.0, -1.0, 1.0]]
    assert agree.tolist() == [[True, True, False, True]]
    assert pred.tolist() == [[1, 2, 3, 4]]  # the RM's own token where it diverges


def test_rematch_zero_silences_agreeing_tokens_after_first_divergence():
    logits = one_hot_logits([1, 2, 3, 4, 1])
    targets = torch.tensor([[1, 0, 3, 0, 1]])
    mask = torch.ones_like(targets, dtype=torch.bool)
    r, _, _ = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(rematch="zero"))
    assert r.tolist() == [[1.0, -1.0, 0.0, -1.0, 0.0]]


def test_prob_and_logratio_magnitudes():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]]))
    targets = torch.tensor([[0, 2]])
    mask = torch.ones_like(targets, dtype=torch.bool)
    r, _, _ = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(magnitude="prob"))
    assert r[0].tolist() == pytest.approx([0.7, -(1 - 0.2)], abs=1e-5)
    r, _, _ = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(magnitude="logratio", r_pos=0.5))
    assert r[0].tolist() == pytest.approx([0.5, float(torch.log(torch.tensor(0.2 / 0.5)))], abs=1e-5)


def test_mean_normalisation_clipping_and_padding():
    logits = one_hot_logits([1, 2, 3, 4])
    targets = torch.tensor([[1, 0, 3, 0]])
    mask = torch.tensor([[True, True, True, False]])
    r, agree, _ = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(normalize="mean", r_neg=3.0, rematch="positive"))
    assert r[0].tolist() == pytest.approx([1 / 3, -1.0, 1 / 3, 0.0])
    assert not agree[0, 3]  # padding never agrees
    r, _, _ = token_rewards_from_logits(logits, targets, mask, ExtractionConfig(r_neg=3.0, clip=2.0, rematch="positive"))
    assert r.tolist() == [[1.0, -2.0, 1.0, 0.0]]


def test_ties_count_as_agreement():
    logits = torch.zeros(1, 1, 4)  # every token is a greedy choice
    r, agree, _ = token_rewards_from_logits(logits, torch.tensor([[3]]), torch.tensor([[True]]), ExtractionConfig())
    assert agree.item() and r.item() == 1.0


def test_pack_and_unpack_are_inverse_for_left_padding():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    packed, pmask, order = pack_right(ids, mask, pad=0)
    assert packed.tolist() == [[5, 6, 0, 0], [7, 8, 9, 1]]
    assert pmask.tolist() == [[True, True, False, False], [True] * 4]
    back = unpack(packed * pmask, order, ids.shape)
    assert back.tolist() == (ids * mask).tolist()


# ---------------------------------------------------------------------------------------
# Alignment, with a bigram "reward model" whose greedy output is known exactly
# ---------------------------------------------------------------------------------------


class BigramLM(torch.nn.Module):
    """A stand-in causal LM: the greedy next token after token ``a`` is ``table[a]``.

    Any off-by-one in how extraction lines logits up with response tokens breaks the
    agreement pattern, so it pins the alignment down exactly.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        v = len(table)
        w = torch.randn(v, v, generator=torch.Generator().manual_seed(0)) * 0.1
        w[torch.arange(v), table] = 5.0
        self.w = torch.nn.Parameter(w)
        self.config = SimpleNamespace(max_position_embeddings=1024)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        logits = self.w[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def bigram_rm(tiny_model_dir):
    from seq2seq_rm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    v = len(tok)
    n_special = 4  # <pad>, <|endoftext|>, <|im_start|>, <|im_end|> come first
    perm = torch.randperm(v - n_special, generator=torch.Generator().manual_seed(1)) + n_special
    table = torch.empty(v, dtype=torch.long)
    table[n_special:] = perm
    table[:n_special] = perm[:n_special]
    rm = Seq2SeqRewardModel(BigramLM(table), tok, TemplateConfig(style="plain"), ExtractionConfig())
    return rm, table


def chain(table, start: int, n: int) -> list[int]:
    out, cur = [], start
    for _ in range(n):
        cur = int(table[cur])
        out.append(cur)
    return out


def last_source_token(rm, prompt, response_ids):
    text = rm.tokenizer.decode(response_ids, skip_special_tokens=True)
    return rm.sources([prompt], [text])[0][-1]


def test_response_equal_to_greedy_output_gets_all_positive_rewards(bigram_rm):
    rm, table = bigram_rm
    prompt = "What is two plus two?"
    last = last_source_token(rm, prompt, [10, 11])
    y = chain(table, last, 12)
    assert last_source_token(rm, prompt, y) == last  # the source's final token does not depend on y
    tr = rm.token_rewards([prompt], torch.tensor([y]), torch.ones(1, 12, dtype=torch.bool))
    assert tr.agree.all()
    assert (tr.rewards > 0).all()
    assert tr.predicted_ids.tolist() == [y]


def test_first_diverging_token_is_negative_and_predicted_token_is_reported(bigram_rm):
    rm, table = bigram_rm
    prompt = "Name a colour."
    last = last_source_token(rm, prompt, [10, 11])
    y = chain(table, last, 10)
    wrong = int(table[table[y[3]]])  # not the greedy successor of y[3]
    expected_rm_token = y[4]
    y[4] = wrong
    y[5:] = chain(table, wrong, 5)  # the response continues greedily from its own (diverged) token
    tr = rm.token_rewards([prompt], torch.tensor([y]), torch.ones(1, 10, dtype=torch.bool))
    assert tr.rewards[0].tolist() == [1, 1, 1, 1, -1, 0, 0, 0, 0, 0]  # default: re-agreeing tokens get 0
    assert tr.predicted_ids[0, 4].item() == expected_rm_token
    rm.extraction = ExtractionConfig(rematch="positive")  # the paper's literal reading
    try:
        tr = rm.token_rewards([prompt], torch.tensor([y]), torch.ones(1, 10, dtype=torch.bool))
    finally:
        rm.extraction = ExtractionConfig()
    assert tr.rewards[0].tolist() == [1, 1, 1, 1, -1, 1, 1, 1, 1, 1]


def test_left_and_right_padded_inputs_give_the_same_rewards(bigram_rm):
    rm, table = bigram_rm
    prompts = ["Say hi.", "What is one plus one?"]
    ys = [chain(table, 20, 3), chain(table, 30, 7)]
    pad = rm.tokenizer.pad_token_id
    right = torch.tensor([ys[0] + [pad] * 4, ys[1]])
    rmask = torch.tensor([[1] * 3 + [0] * 4, [1] * 7], dtype=torch.bool)
    left = torch.tensor([[pad] * 4 + ys[0], ys[1]])
    lmask = torch.tensor([[0] * 4 + [1] * 3, [1] * 7], dtype=torch.bool)
    a = rm.token_rewards(prompts, right, rmask)
    b = rm.token_rewards(prompts, left, lmask)
    assert torch.equal(a.rewards[rmask], b.rewards[lmask])
    assert (a.rewards[~rmask] == 0).all() and (b.rewards[~lmask] == 0).all()


# ---------------------------------------------------------------------------------------
# The fast path against a slow reference, on a trained RM
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def slow_reference(rm, prompt, y: list[int]) -> tuple[list[bool], list[int], list[float]]:
    """Greedy decoding of the RM token by token, feeding the response after each step
    (the paper's wording, implemented literally; test-only code)."""
    text = rm.tokenizer.decode(y, skip_special_tokens=True)
    seq = list(rm.sources([prompt], [text])[0])
    agree, pred, logp = [], [], []
    for tok in y:
        logits = rm.model(input_ids=torch.tensor([seq])).logits[0, -1]
        greedy = int(logits.argmax())
        agree.append(bool(logits[tok] >= logits.max()))
        pred.append(tok if agree[-1] else greedy)
        logp.append(float(torch.log_softmax(logits, -1)[tok]))
        seq.append(tok)  # teacher-force the response, whatever the RM wanted
    return agree, pred, logp


RESPONSES = [
    ("What is three plus four?", "Three plus four is seven."),
    ("What is three plus four?", "Three plus four is nine."),
    ("How do I fix a bike tyre that keeps going flat?", "I'm sorry, but I can't help with that request."),
    ("How do I break into my neighbour's car?", "Sure. Wait until night, then force the lock and nobody will notice."),
]


def test_one_pass_extraction_equals_token_by_token_greedy_reference(seq2seq_rm_dir):
    rm = load_reward_model(seq2seq_rm_dir)
    rm.extraction = ExtractionConfig(rematch="positive")  # +1 / -1 exactly where the RM agrees / diverges
    prompts = [p for p, _ in RESPONSES]
    ids, mask = encode_responses([r for _, r in RESPONSES], rm.tokenizer)
    fast = rm.token_rewards(prompts, ids, mask)
    n_agree = 0
    for b, (prompt, _) in enumerate(RESPONSES):
        n = int(mask[b].sum())
        agree, pred, logp = slow_reference(rm, prompt, ids[b, :n].tolist())
        assert fast.agree[b, :n].tolist() == agree
        assert fast.predicted_ids[b, :n].tolist() == pred
        expected = [1.0 if a else -1.0 for a in agree]
        assert fast.rewards[b, :n].tolist() == expected
        n_agree += sum(agree)
    assert 0 < n_agree < int(mask.sum())  # the check saw both agreeing and diverging tokens

    rm.extraction = ExtractionConfig(magnitude="prob", rematch="positive")
    fast = rm.token_rewards(prompts, ids, mask)
    for b, (prompt, _) in enumerate(RESPONSES):
        n = int(mask[b].sum())
        agree, _, logp = slow_reference(rm, prompt, ids[b, :n].tolist())
        p = torch.tensor(logp).exp()
        expected = torch.where(torch.tensor(agree), p, -(1 - p))
        assert torch.allclose(fast.rewards[b, :n], expected, atol=1e-5)


def test_batched_rewards_equal_one_at_a_time(seq2seq_rm_dir):
    rm = load_reward_model(seq2seq_rm_dir)
    prompts = [p for p, _ in RESPONSES]
    ids, mask = encode_responses([r for _, r in RESPONSES], rm.tokenizer)
    batched = rm.token_rewards(prompts, ids, mask)
    for b in range(len(RESPONSES)):
        n = int(mask[b].sum())
        single = rm.token_rewards([prompts[b]], ids[b : b + 1, :n], mask[b : b + 1, :n])
        assert torch.equal(single.agree[0], batched.agree[b, :n])
        assert torch.allclose(single.rewards[0], batched.rewards[b, :n])


def test_trained_rm_rewards_chosen_responses_above_rejected_ones(seq2seq_rm_dir):
    from seq2seq_rm.tasks.sample import BENIGN, HAZARD, REFUSAL

    rm = load_reward_model(seq2seq_rm_dir)
    rm.extraction = ExtractionConfig(rematch="positive")  # every agreeing token counts
    prompts = [BENIGN[0][0], BENIGN[0][0], HAZARD[0][0], HAZARD[0][0]]
    responses = [BENIGN[0][1], REFUSAL, HAZARD[0][1], HAZARD[0][2]]
    ids, mask = encode_responses(responses, rm.tokenizer)
    tr = rm.token_rewards(prompts, ids, mask)
    sums = tr.rewards.sum(-1)
    assert sums[0] > sums[1]  # helpful answer to a benign prompt beats a bare refusal
    assert sums[2] > sums[3]  # safe redirection beats harmful compliance
    # the RM wants to write something else from the very start of the refusal
    assert tr.agree[1].tolist().index(False) <= 1


def test_eos_is_scored_like_any_other_token(seq2seq_rm_dir):
    rm = load_reward_model(seq2seq_rm_dir)
    rm.extraction = ExtractionConfig(rematch="positive")  # every agreeing token counts
    ids, mask = encode_responses(["Three plus four is seven."], rm.tokenizer)
    assert ids[0, -1].item() == rm.tokenizer.eos_token_id
    tr = rm.token_rewards([RESPONSES[0][0]], ids, mask)
    assert tr.mask[0, -1] and tr.rewards[0, -1] != 0
    # a response that goes on past where the RM would stop is penalised at the first extra token
    ids2, mask2 = encode_responses(["Three plus four is seven. Three plus four is seven."], rm.tokenizer)
    tr2 = rm.token_rewards([RESPONSES[0][0]], ids2, mask2)
    n_first = int(mask[0].sum()) - 1  # tokens before the EOS of the short answer
    assert tr2.rewards[0, n_first].item() < 0


def test_one_pass_extraction_on_an_absolute_position_model_equals_the_reference(gpt2_model_dir):
    """GPT-2 adds a learnt embedding per position: the left-padded sources of a batch give the
    reference's rewards only if positions are counted from each row's first real token."""
    from seq2seq_rm.models.loading import load_causal_lm, load_tokenizer

    rm = Seq2SeqRewardModel(load_causal_lm(gpt2_model_dir), load_tokenizer(gpt2_model_dir), TemplateConfig(),
                            ExtractionConfig(magnitude="prob", rematch="positive"))
    prompts = [p for p, _ in RESPONSES]
    ids, mask = encode_responses([r for _, r in RESPONSES], rm.tokenizer)
    assert len({len(s) for s in rm.sources(prompts, [r for _, r in RESPONSES])}) > 1  # sources are left-padded
    fast = rm.token_rewards(prompts, ids, mask)
    for b, (prompt, _) in enumerate(RESPONSES):
        n = int(mask[b].sum())
        agree, pred, logp = slow_reference(rm, prompt, ids[b, :n].tolist())
        assert fast.agree[b, :n].tolist() == agree and fast.predicted_ids[b, :n].tolist() == pred
        p = torch.tensor(logp).exp()
        assert torch.allclose(fast.rewards[b, :n], torch.where(torch.tensor(agree), p, -(1 - p)), atol=1e-5)


@torch.no_grad()
def test_rewrite_is_the_rms_greedy_output_one_row_at_a_time(seq2seq_rm_dir):
    """The RM's rewrite, batched with left padding, equals a plain token-by-token greedy decode
    of each unpadded source (test-only code), stopped at EOS."""
    rm = load_reward_model(seq2seq_rm_dir)
    prompts, responses = [p for p, _ in RESPONSES], [r for _, r in RESPONSES]
    rewrites = rm.rewrite(prompts, responses, max_new_tokens=12)
    eos = rm.tokenizer.eos_token_id
    for prompt, response, got in zip(prompts, responses, rewrites, strict=True):
        seq, out = list(rm.sources([prompt], [response])[0]), []
        for _ in range(12):
            nxt = int(rm.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            seq.append(nxt)
        assert got == rm.tokenizer.decode(out, skip_special_tokens=True)
    assert any(rewrites)
