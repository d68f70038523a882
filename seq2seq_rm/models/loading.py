"""Loading and saving models and tokenizers, with errors a user can act on.

``spec`` is a local folder, a hub id (``owner/name``), or with GGUF a folder holding the ``.gguf``
file or the ``.gguf`` path itself. Local folders must hold safetensors weights: pickled
``pytorch_model.bin`` files are refused, since unpickling runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import ModelError
from ..io import atomic_dir

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PAD_TOKEN = "<pad>"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# What the loaders raise for a missing, unreadable or unsupported checkpoint (hub errors subclass these).
_LOAD_ERRORS = (OSError, ValueError, KeyError)


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (read now, not at import)."""
    import huggingface_hub

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or huggingface_hub.is_offline_mode()


@dataclass(frozen=True)
class _Source:
    """Where to load from: ``path`` is a local folder or a hub id; ``gguf_file`` a file name in it."""

    path: str
    local: bool
    gguf_file: str | None = None

    @property
    def hub_kwargs(self) -> dict:
        # Offline, tell the library up front: it then reads the cache only, with no network retries.
        return {"local_files_only": True} if (self.local or is_offline()) else {}

    def describe(self) -> str:
        if self.gguf_file:
            return str(Path(self.path) / self.gguf_file) if self.local else f"{self.path} ({self.gguf_file})"
        return self.path


def _resolve(spec: str | os.PathLike, gguf_file: str | None = None) -> _Source:
    spec = os.fspath(spec)
    p = Path(spec).expanduser()
    if gguf_file is None and spec.endswith(".gguf"):
        if not p.is_file():
            raise ModelError(f"GGUF file {spec} does not exist")
        return _Source(str(p.parent), True, p.name)
    if gguf_file is not None and Path(gguf_file).is_absolute():
        gp = Path(gguf_file)
        if not gp.is_file():
            raise ModelError(f"GGUF file {gguf_file} does not exist")
        return _Source(str(gp.parent), True, gp.name)
    if p.exists():
        if not p.is_dir():
            raise ModelError(
                f"{spec} is a file, not a model folder (for a .gguf file, name it with a .gguf suffix)"
            )
        if gguf_file is not None and not (p / gguf_file).is_file():
            raise ModelError(f"GGUF file {gguf_file} not found in folder {p}")
        return _Source(str(p), True, gguf_file)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _Source(spec, False, gguf_file)
    raise ModelError(
        f"model {spec!r} not found: no such folder, and it is not a hub id of the form owner/name"
    )


def _check_weights(src: _Source) -> None:
    if not src.local or src.gguf_file:
        return
    folder = Path(src.path)
    if any((folder / f).is_file() for f in SAFETENSORS_FILES):
        return
    pickled = [f for f in PICKLE_FILES if (folder / f).is_file()]
    if pickled:
        raise ModelError(
            f"model folder {folder} holds only pickled weights ({', '.join(pickled)}); pickled checkpoints are "
            "refused because loading them can run arbitrary code. Convert it to safetensors "
            "(load it once in a trusted session and call save_pretrained), then load it here "
            "(loading uses use_safetensors=True)."
        )
    other = sorted(f.name for f in folder.glob("*.safetensors"))
    if other:
        return  # e.g. a variant such as model.fp16.safetensors: let the library decide
    raise ModelError(
        f"model folder {folder} has no weights: expected {' or '.join(SAFETENSORS_FILES)}"
        + ("; it has no config.json either" if not (folder / "config.json").is_file() else "")
    )


def _check_tokenizer_files(src: _Source) -> None:
    if not src.local or src.gguf_file:
        return
    folder = Path(src.path)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"folder {folder} has no tokenizer: missing {', '.join(TOKENIZER_FILES)} (any one of them is enough)"
        )


def _load_failed(what: str, src: _Source, err: Exception) -> ModelError:
    msg = f"cannot load {what} from {src.describe()}: {type(err).__name__}: {err}"
    if not src.local and is_offline():
        msg = (
            f"cannot load {what} {src.path!r}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
            f"cache. Download it once with network access (or unset HF_HUB_OFFLINE), or pass a local folder. "
            f"({type(err).__name__}: {err})"
        )
    return ModelError(msg)


def load_tokenizer(
    spec: str | os.PathLike, *, gguf_file: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer from a folder, hub id or GGUF file."""
    src = _resolve(spec, gguf_file)
    _check_tokenizer_files(src)
    kwargs = dict(src.hub_kwargs, trust_remote_code=trust_remote_code)
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        return AutoTokenizer.from_pretrained(src.path, **kwargs)
    except _LOAD_ERRORS as e:
        raise _load_failed("tokenizer", src, e) from e


@contextlib.contextmanager
def quiet_progress(enabled: bool = True):
    """No transformers / hub progress bars inside ("Loading weights", "Writing model shards"):
    a model load or save is one log line, not a bar per call. Restores the previous setting."""
    from transformers.utils import logging as hf_logging

    was = enabled and hf_logging.is_progress_bar_enabled()
    if was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_gguf(enabled: bool):
    """transformers draws its GGUF conversion bar with a plain tqdm (not its switchable one): off too."""
    module = None
    if enabled:
        try:
            import transformers.modeling_gguf_pytorch_utils as module
        except ImportError:
            module = None
    original = getattr(module, "tqdm", None)
    if original is not None:
        module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            module.tqdm = original


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _LoadReportFilter(logging.Filter):
    """Keeps transformers' "LOAD REPORT" table (missing / unexpected keys) off the terminal: the
    loaders below log what matters in one line (a new score head is expected), and keep the table
    for an error message if loading fails."""

    def __init__(self):
        super().__init__()
        self.reports: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.reports.append(_ANSI.sub("", message))
            return False
        return True


# ------------------------------------------------------------------------------------------- dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name the ``dtype`` option and the metadata use)."""
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(spec: str | os.PathLike, *, gguf_file: str | None = None, trust_remote_code: bool = False) -> str:
    """The dtype a checkpoint records (``config.dtype``, formerly ``torch_dtype``) as a name of
    :data:`DTYPES`; ``float32`` when it records none or one we do not load (e.g. float8)."""
    from transformers import AutoConfig

    src = _resolve(spec, gguf_file)
    kwargs = dict(src.hub_kwargs, trust_remote_code=trust_remote_code)
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        config = AutoConfig.from_pretrained(src.path, **kwargs)
    except _LOAD_ERRORS as e:
        raise _load_failed("model config", src, e) from e
    recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = dtype_name(recorded) if isinstance(recorded, torch.dtype) else str(recorded or "float32")
    return name if name in DTYPES else "float32"


def resolve_dtype(dtype: str | torch.dtype, spec: str | os.PathLike | None = None, *, gguf_file: str | None = None,
                  trust_remote_code: bool = False) -> torch.dtype:
    """The torch dtype a model is loaded in: ``dtype`` itself, or for ``"auto"`` the checkpoint's own.

    ``auto`` is resolved here rather than handed to ``from_pretrained`` so that what is recorded in an
    output's metadata is exactly what was loaded.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if spec is None:
            raise ValueError("dtype='auto' needs the checkpoint to read it from")
        dtype = checkpoint_dtype(spec, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if dtype not in DTYPES:
        raise ModelError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _from_pretrained(auto_cls, what: str, src: _Source, **kwargs):
    _check_weights(src)
    kwargs = dict(src.hub_kwargs, **kwargs)
    if src.gguf_file:
        from transformers import GgufConfig

        # Unpack every weight into plain tensors: the result must be trainable and saveable.
        kwargs.update(gguf_file=src.gguf_file, quantization_config=GgufConfig(dequantize=True))
    else:
        kwargs["use_safetensors"] = True
    if kwargs.get("local_files_only"):
        # The Auto classes look for a PEFT adapter_config.json without passing local_files_only on
        # (transformers 5.23): without this, a hub id retries the network for ~30 s before failing.
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    report_filter = _LoadReportFilter()
    hf_logger = logging.getLogger("transformers.modeling_utils")
    hf_logger.addFilter(report_filter)
    try:
        with quiet_progress(src.local), _quiet_gguf(bool(src.gguf_file) and src.local):  # a hub id keeps its download bars
            return auto_cls.from_pretrained(src.path, output_loading_info=True, **kwargs)
    except _LOAD_ERRORS as e:
        raise _load_failed(what, src, e) from e
    except RuntimeError as e:
        if not report_filter.reports:
            raise
        raise ModelError(f"cannot load {what} from {src.describe()}: {e}\n{report_filter.reports[-1]}") from e
    finally:
        hf_logger.removeFilter(report_filter)


def _log_unused(src: _Source, info: dict, expected=("lm_head.", "score.", "classifier.")) -> None:
    """One line for checkpoint tensors the model does not use (a causal LM's head, loading a backbone)."""
    unused = sorted(info.get("unexpected_keys", ()) or ())
    if not unused:
        return
    level = logging.DEBUG if all(k.startswith(expected) for k in unused) else logging.WARNING
    logger.log(level, "%s: %d checkpoint tensor%s not used: %s", src.describe(), len(unused),
               "" if len(unused) == 1 else "s", ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))


def _log_missing(src: _Source, what: str, missing) -> None:
    missing = sorted(missing or ())
    if missing:
        logger.warning("%s: %s newly initialised (not in the checkpoint): %s", src.describe(), what,
                       ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))


def _strip_gguf_quantizer(model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as a plain one: no ``quantization_config``, no attached quantizer.

    transformers marks GGUF-loaded models as quantized (not trainable, not serialisable) even when
    every weight was unpacked to float; a fresh model from the same config with the same state dict
    has none of that.
    """
    config = model.config
    if getattr(config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None:
        return model
    config = type(config).from_dict(config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype if state else torch.float32
    fresh = type(model)(config).to(dtype)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    if getattr(model, "generation_config", None) is not None and fresh.can_generate():
        fresh.generation_config = model.generation_config
    return fresh


def load_causal_lm(
    spec: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load a causal LM from a safetensors folder, a hub id, or a GGUF file (dequantized, trainable).

    ``dtype``: a torch dtype or a name of the ``dtype`` option (``auto``: the checkpoint's own)."""
    src = _resolve(spec, gguf_file)
    dtype = resolve_dtype(dtype, spec, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    model, info = _from_pretrained(
        AutoModelForCausalLM, "causal LM", src, trust_remote_code=trust_remote_code, dtype=dtype
    )
    _log_missing(src, "causal LM weights", info.get("missing_keys"))
    _log_unused(src, info)
    if src.gguf_file:
        model = _strip_gguf_quantizer(model)
    return model


def load_sequence_classifier(
    spec: str | os.PathLike,
    *,
    num_labels: int = 1,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load a sequence classifier (backbone + ``score`` head) for the scalar reward model.

    ``spec`` may be a causal-LM folder: the backbone is reused and the head newly initialised (logged).
    The model finds each row's last token by ``config.pad_token_id``, so call :func:`ensure_pad_token`.
    """
    src = _resolve(spec, None)
    dtype = resolve_dtype(dtype, spec, trust_remote_code=trust_remote_code)
    model, info = _from_pretrained(
        AutoModelForSequenceClassification,
        "sequence classifier",
        src,
        num_labels=num_labels,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
    )
    new_keys = sorted(k for k in info.get("missing_keys", ()) if "score" in k or "classifier" in k)
    if new_keys:
        logger.warning(
            "%s has no classification head: newly initialised %s (%d output%s)",
            src.describe(),
            ", ".join(new_keys),
            num_labels,
            "" if num_labels == 1 else "s",
        )
    other_missing = sorted(set(info.get("missing_keys", ())) - set(new_keys))
    if other_missing:
        raise ModelError(f"{src.describe()} lacks backbone weights: {', '.join(other_missing[:5])}")
    _log_unused(src, info)
    if model.config.pad_token_id is None:
        logger.warning(
            "%s: config.pad_token_id is unset; call ensure_pad_token(tokenizer, model)", src.describe()
        )
    return model


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, atomic: bool = False, replace: bool = False) -> Path:
    """``save_pretrained`` model (safetensors) and tokenizer into ``out_dir``.

    With ``atomic=True`` the folder is written beside ``out_dir`` and renamed into place at the end,
    so a crash never leaves a half-written model; a non-empty ``out_dir`` is replaced only with
    ``replace=True``.
    """
    out = Path(out_dir)
    if atomic:
        with atomic_dir(out, replace=replace) as tmp:
            save_model(model, tokenizer, tmp)
        return out
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(out)  # transformers 5 always writes safetensors
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def ensure_pad_token(tokenizer, model=None) -> bool:
    """Give ``tokenizer`` a pad token distinct from eos; returns True if a token was added.

    The scalar RM finds each row's last real token by the pad id, so eos is never reused as pad:
    a missing pad, or one equal to eos, is replaced by a new ``<pad>`` special token. With ``model``,
    its embeddings grow to cover the new token and ``config.pad_token_id`` is set.
    """
    added = False
    pad_id = tokenizer.pad_token_id
    if pad_id is None or (tokenizer.eos_token_id is not None and pad_id == tokenizer.eos_token_id):
        if pad_id is not None:
            logger.info("pad token %r equals eos; adding a distinct %s", tokenizer.pad_token, PAD_TOKEN)
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added = True
    if model is not None:
        emb = model.get_input_embeddings()
        if emb is not None and len(tokenizer) > emb.weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
    return added


# --------------------------------------------------------------------------------------------- GGUF


def gguf_to_folder(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype=torch.float32) -> Path:
    """Convert a GGUF file (e.g. SmolLM2's) into a trainable safetensors folder (model + tokenizer)."""
    gguf_path = Path(gguf_path)
    model = load_causal_lm(gguf_path, dtype=dtype)
    tokenizer = load_tokenizer(gguf_path)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, name, getattr(tokenizer, name))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return save_model(model, tokenizer, out_dir, atomic=True)


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp interleaved layout (inverse of transformers' reverse permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a Llama model folder (ours, with a byte-level BPE tokenizer) as an F32 GGUF file.

    Uses llama.cpp's key and tensor names, so transformers' and llama.cpp's loaders read it back.
    """
    import gguf

    folder, path = Path(folder), Path(path)
    model = load_causal_lm(folder)
    tokenizer = load_tokenizer(folder)
    cfg = model.config
    if cfg.model_type != "llama":
        raise ModelError(f"export_gguf supports Llama models only; {folder} is {cfg.model_type!r}")
    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tok_json["model"]["type"] != "BPE" or tok_json.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ModelError(f"export_gguf needs a byte-level BPE tokenizer; {folder} has another kind")
    n_vocab = cfg.vocab_size
    vocab = tokenizer.get_vocab()
    tokens = [""] * n_vocab
    for tok, i in vocab.items():
        if i < n_vocab:
            tokens[i] = tok
    special_ids = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    for i in range(n_vocab):
        if not tokens[i]:
            tokens[i] = f"[PAD{i}]"  # llama.cpp's filler for rows the tokenizer does not use
    token_types = [
        gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL for i in range(n_vocab)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ModelError(f"export_gguf: rope type {rope.get('rope_type')!r} is not supported")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(folder.name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        writer.add_vocab_size(n_vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
        if tokenizer.eos_token_id is not None:
            writer.add_eos_token_id(tokenizer.eos_token_id)
        if tokenizer.pad_token_id is not None:
            writer.add_pad_token_id(tokenizer.pad_token_id)
        if tokenizer.bos_token_id is not None:
            writer.add_bos_token_id(tokenizer.bos_token_id)
        writer.add_add_bos_token(False)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
        names = {
            "model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
        }
        if not cfg.tie_word_embeddings:
            names["lm_head.weight"] = "output.weight"
        per_layer = {
            "input_layernorm.weight": "attn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.o_proj.weight": "attn_output.weight",
            "post_attention_layernorm.weight": "ffn_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        }
        for i in range(cfg.num_hidden_layers):
            for hf, gg in per_layer.items():
                names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
        unknown = sorted(set(sd) - set(names) - {"lm_head.weight"})
        if unknown:
            raise ModelError(f"export_gguf: unexpected tensors in {folder}: {', '.join(unknown[:5])}")
        for hf, gg in names.items():
            w = sd[hf]
            if hf.endswith("q_proj.weight"):
                w = _permute_qk(w, cfg.num_attention_heads)
            elif hf.endswith("k_proj.weight"):
                w = _permute_qk(w, cfg.num_key_value_heads)
            writer.add_tensor(gg, np.ascontiguousarray(w, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_backbone(spec: str | os.PathLike, *, trust_remote_code: bool = False,
                  dtype: str | torch.dtype = torch.float32):
    """The transformer body of a causal-LM or classifier folder (no LM/score head), e.g. for a critic."""
    from transformers import AutoModel

    src = _resolve(spec, None)
    dtype = resolve_dtype(dtype, spec, trust_remote_code=trust_remote_code)
    model, info = _from_pretrained(AutoModel, "backbone", src, trust_remote_code=trust_remote_code, dtype=dtype)
    _log_missing(src, "backbone weights", info.get("missing_keys"))
    _log_unused(src, info)
    return model
