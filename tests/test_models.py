"""Model loading, tiny models, LoRA and GGUF: behavioural tests on models built here (no downloads)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from seq2seq_rm.errors import DataError, ModelError
from seq2seq_rm.models import (
    SIZES,
    apply_lora,
    build_tiny_model,
    corpus_texts_from_jsonl,
    ensure_pad_token,
    export_gguf,
    gguf_to_folder,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    merge_lora,
    save_model,
    train_tokenizer,
)

CORPUS = [
    f"Question {i}: what is {i} plus {i + 1}? Answer: {2 * i + 1}. The quick brown fox jumps over the lazy dog."
    for i in range(150)
] + [
    "Feedback: the summary misses the main point and invents a date.",
    "naïve café — 東京 and Zürich; ünïcödé text should round-trip.",
    "def add(a, b):\n    return a + b\n",
]
TEXTS = [
    "Hello world, the quick brown fox.",
    "naïve café — 東京",
    "  leading spaces,\ttabs\nand newlines  ",
    "emoji 🤖 and symbols ∑ ≠ ∞",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(CORPUS, str(tmp_path_factory.mktemp("models") / "tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_causal_lm(tiny_dir), load_tokenizer(tiny_dir)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_any_text():
    tok = train_tokenizer(CORPUS, 512)
    for text in TEXTS + ["Question 7: what is 7 plus 8?"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # special tokens are single ids and never split
    for special in ("<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special)) == 1
    assert tok.pad_token == "<pad>" and tok.eos_token == "<|im_end|>" and tok.bos_token is None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    assert tok.unk_token is None


def test_tokenizer_small_corpus_stops_early():
    tok = train_tokenizer(["tiny corpus"], 4096)
    assert 256 < len(tok) < 4096  # byte alphabet + specials + a few merges
    assert tok.decode(tok.encode("unseen ✓ text")) == "unseen ✓ text"


def test_chat_template_is_chatml(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------------------ tiny model


def test_tiny_model_builds_and_reloads_with_auto_classes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.tie_word_embeddings
    assert model.config.max_position_embeddings == tok.model_max_length == 1024
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        64,
        2,
        4,
        2,
    )
    gen = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    # it runs and generation stops at eos
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
    )
    out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= len(ids) + 3
    # atomic write: no temporary sibling left behind
    assert [p.name for p in Path(tiny_dir).parent.iterdir() if p.name.startswith(".")] == []


def test_same_seed_gives_identical_weights(tmp_path, tiny_dir):
    again = build_tiny_model(CORPUS, str(tmp_path / "again"), seed=0)
    other = build_tiny_model(CORPUS, str(tmp_path / "other"), seed=1)
    a, b, c = (load_file(f"{d}/model.safetensors") for d in (tiny_dir, again, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (
        Path(tiny_dir) / "tokenizer.json"
    ).read_text()


def test_small_size_and_vocab_override(tmp_path):
    assert set(SIZES) >= {"tiny", "small"}
    d = build_tiny_model(CORPUS * 3, str(tmp_path / "small"), size="small", vocab_size=600)
    model, tok = load_causal_lm(d), load_tokenizer(d)
    assert model.config.hidden_size == 256 and model.config.num_hidden_layers == 4
    assert model.config.vocab_size == len(tok) <= 600
    with pytest.raises(ModelError, match="unknown model size"):
        build_tiny_model(CORPUS, str(tmp_path / "x"), size="huge")


# ------------------------------------------------------------------------------------------ loading errors


def test_folder_without_tokenizer_is_refused(tmp_path, tiny):
    model, _ = tiny
    folder = tmp_path / "no_tok"
    model.save_pretrained(folder)
    with pytest.raises(ModelError) as err:
        load_tokenizer(str(folder))
    assert str(folder) in str(err.value)
    assert "tokenizer.json" in str(err.value) and "tokenizer_config.json" in str(err.value)
    # the model itself still loads from there
    assert isinstance(load_causal_lm(str(folder)), PreTrainedModel)


def test_pickled_weights_are_refused(tmp_path, tiny):
    model, tok = tiny
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for loader in (load_causal_lm, load_sequence_classifier):
        with pytest.raises(ModelError) as err:
            loader(str(folder))
        msg = str(err.value)
        assert str(folder) in msg and "pickle" in msg and "safetensors" in msg


def test_folder_without_weights(tmp_path, tiny):
    model, _ = tiny
    model.config.save_pretrained(tmp_path / "cfg_only")
    with pytest.raises(ModelError, match="no weights"):
        load_causal_lm(str(tmp_path / "cfg_only"))


def test_nonexistent_path(tmp_path):
    for spec in (str(tmp_path / "missing"), "./not/here/at/all", "just-a-name"):
        with pytest.raises(ModelError, match="not found"):
            load_causal_lm(spec)
        with pytest.raises(ModelError, match="not found"):
            load_tokenizer(spec)


def test_offline_hub_id_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    for loader in (load_tokenizer, load_causal_lm, load_sequence_classifier):
        with pytest.raises(ModelError) as err:
            loader("seq2seq-rm-tests/definitely-not-cached-model")
        assert "HF_HUB_OFFLINE" in str(err.value) and "seq2seq-rm-tests/definitely-not-cached-model" in str(
            err.value
        )
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------------------ scalar RM


def test_sequence_classifier_from_causal_folder(tiny_dir, tiny, caplog):
    causal, tok = tiny
    with caplog.at_level(logging.WARNING, logger="seq2seq_rm.models.loading"):
        rm = load_sequence_classifier(tiny_dir)
    assert "newly initialised" in caplog.text and "score" in caplog.text
    assert rm.score.out_features == 1
    assert rm.config.pad_token_id == tok.pad_token_id
    # backbone weights are the causal LM's
    assert torch.equal(rm.model.embed_tokens.weight, causal.model.embed_tokens.weight)

    short, long = "a short answer", "a considerably longer answer with many more tokens in it"
    batch = tok([short, long], padding=True, return_tensors="pt")
    assert tok.padding_side == "right" and (batch["input_ids"][0] == tok.pad_token_id).any()
    with torch.no_grad():
        padded = rm(**batch).logits
        alone = [rm(**tok([t], return_tensors="pt")).logits for t in (short, long)]
    assert padded.shape == (2, 1)
    torch.testing.assert_close(padded[0], alone[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1], alone[1][0], atol=1e-5, rtol=1e-5)


def test_sequence_classifier_round_trip_keeps_head(tmp_path, tiny_dir, caplog):
    rm = load_sequence_classifier(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    save_model(rm, tok, tmp_path / "rm", atomic=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seq2seq_rm.models.loading"):
        again = load_sequence_classifier(str(tmp_path / "rm"))
    assert "newly initialised" not in caplog.text
    assert torch.equal(again.score.weight, rm.score.weight)


def test_ensure_pad_token_adds_distinct_pad():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    assert tok.pad_token is None
    n = len(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=n,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=None,
        )
    )
    assert ensure_pad_token(tok, model) is True
    assert tok.pad_token == "<pad>" and tok.pad_token_id == n and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == n + 1
    assert model.config.pad_token_id == n
    assert tok.decode(tok.encode("hello <pad>")) == "hello <pad>"
    # idempotent
    assert ensure_pad_token(tok, model) is False and len(tok) == n + 1

    # a pad that equals eos is replaced too: the RM finds the last token by the pad id
    tok2 = train_tokenizer(CORPUS, 300)
    tok2.pad_token = tok2.eos_token
    assert ensure_pad_token(tok2) is True
    assert tok2.pad_token == "<pad>" and tok2.pad_token_id != tok2.eos_token_id


# ------------------------------------------------------------------------------------------ LoRA


def _perturb_lora(peft_model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)


def test_lora_causal_trains_only_adapters_and_merges(tiny_dir):
    base = load_causal_lm(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    ids = tok.encode(TEXTS[0])
    ref = _logits(base, ids)
    pm = apply_lora(base, r=4, alpha=8)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "embed_tokens" in n for n in trainable)
    torch.testing.assert_close(_logits(pm, ids), ref)  # B starts at zero: no change yet
    _perturb_lora(pm)
    peft_out = _logits(pm, ids)
    assert not torch.allclose(peft_out, ref)
    merged = merge_lora(pm)
    assert isinstance(merged, PreTrainedModel) and type(merged) is LlamaForCausalLM
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), peft_out, atol=1e-5, rtol=1e-5)


def test_lora_seq_cls_keeps_score_trainable_and_merges(tiny_dir):
    rm = load_sequence_classifier(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    pm = apply_lora(rm, task_type="SEQ_CLS")
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    _perturb_lora(pm)
    with torch.no_grad():
        pm.base_model.model.score.modules_to_save["default"].weight.add_(0.5)
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        peft_out = pm(**batch).logits
    merged = merge_lora(pm)
    assert isinstance(merged, PreTrainedModel) and not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, peft_out, atol=1e-5, rtol=1e-5)


def test_lora_rejects_bad_task_type(tiny):
    with pytest.raises(ModelError, match="task_type"):
        apply_lora(tiny[0], task_type="SEQ2SEQ")


# ------------------------------------------------------------------------------------------ GGUF


def test_gguf_export_loads_back_identically(tmp_path, tiny_dir, tiny):
    model, tok = tiny
    gguf_path = export_gguf(tiny_dir, tmp_path / "gguf" / "tiny-f32.gguf")
    assert gguf_path.is_file()

    g_model = load_causal_lm(str(gguf_path))
    g_tok = load_tokenizer(str(gguf_path))
    # same through the (folder, gguf_file=name) form
    g_tok2 = load_tokenizer(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert getattr(g_model.config, "quantization_config", None) is None

    chat = tok.apply_chat_template(
        [{"role": "user", "content": TEXTS[1]}, {"role": "assistant", "content": TEXTS[2]}], tokenize=False
    )
    for text in TEXTS + [chat, "<pad><|endoftext|> tail"]:
        ids = tok.encode(text)
        assert g_tok.encode(text) == ids == g_tok2.encode(text)
        assert g_tok.decode(ids) == text
        torch.testing.assert_close(_logits(g_model, ids), _logits(model, ids), atol=1e-4, rtol=0)
    assert (g_tok.eos_token_id, g_tok.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert g_tok.chat_template == tok.chat_template

    # converted to a plain, trainable safetensors folder
    out = gguf_to_folder(gguf_path, tmp_path / "converted")
    conv = AutoModelForCausalLM.from_pretrained(out)
    conv_tok = AutoTokenizer.from_pretrained(out)
    assert (out / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    ids = tok.encode(chat)
    torch.testing.assert_close(_logits(conv, ids), _logits(model, ids), atol=1e-4, rtol=0)
    assert conv_tok.encode(chat) == ids
    assert conv.config.pad_token_id == tok.pad_token_id and conv.config.bos_token_id is None
    assert all(p.requires_grad for p in conv.parameters())


def test_gguf_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nothing.gguf"))
    with pytest.raises(ModelError, match="not found"):
        load_tokenizer(str(tmp_path), gguf_file="nothing.gguf")


# ------------------------------------------------------------------------------------------ corpus


def test_corpus_texts_from_jsonl_picks_up_nested_strings(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {"prompt": "Summarise this.", "response": "A summary.", "score": 3},
        {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "héllo"}]},
        {"meta": {"notes": ["deep", {"deeper": "deepest"}]}, "empty": "", "flag": True},
    ]
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n"
    )
    texts = corpus_texts_from_jsonl(path)
    for s in ("Summarise this.", "A summary.", "user", "hi there", "assistant", "héllo", "deep", "deepest"):
        assert s in texts
    assert "" not in texts and "prompt" not in texts  # keys are not texts


def test_corpus_texts_from_jsonl_bad_json_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "ok"}\n{"b": "fine"}\n{"c": oops}\n')
    with pytest.raises(DataError) as err:
        corpus_texts_from_jsonl(path)
    assert err.value.row == 3 and str(path) in str(err.value) and "row 3" in str(err.value)
    with pytest.raises(DataError, match="cannot read"):
        corpus_texts_from_jsonl(tmp_path / "absent.jsonl")
