"""Adapters from public preference schemas to :class:`PreferenceRecord`.

Each adapter turns one raw row (a ``dict`` as read by :func:`seq2seq_rm.data.loading.read_rows`)
into a record, or raises :class:`DataError` naming the file, row and field when the row does
not follow its schema. Adapters only check structure and types; content problems (empty
prompt, empty response, chosen identical to rejected) are judged by the loader, which counts
them as skips or raises in strict mode.

Supported schemas:

``standard``
    TRL "standard" preference rows: ``{"prompt": str, "chosen": str, "rejected": str}``.
    A prompt given as a list of chat messages is accepted too and stays a list.

``conversational``
    TRL "conversational" preference rows: ``prompt`` is a list of ``{"role", "content"}``
    messages, ``chosen``/``rejected`` are lists of messages, usually one assistant message.
    Implicit-prompt rows have no ``prompt``: chosen and rejected are whole conversations and
    their longest common prefix of messages is the prompt. The response is the content of
    the final message, which must be an assistant message. Messages between the prompt and
    the final one (tool calls, earlier turns) are appended to the prompt; chosen and rejected
    must agree on them. A prompt repeated at the start of chosen and rejected (as in
    HuggingFaceH4/ultrafeedback_binarized, whose prompt is a string) is not doubled. Only
    ``role`` and ``content`` of each message are kept.

``pku_saferlhf``
    PKU-Alignment/PKU-SafeRLHF: ``prompt``, ``response_0``, ``response_1``,
    ``better_response_id``, ``safer_response_id`` (0 or 1), ``is_response_{0,1}_safe`` and
    optional ``response_{0,1}_harm_category``, ``response_{0,1}_severity_level``, sources and
    hashes. ``preference="better"`` follows ``better_response_id`` (helpfulness),
    ``"safer"`` follows ``safer_response_id`` (harmlessness). All non-text fields are kept in
    ``meta``, plus ``chosen_id``, ``chosen_is_safe``/``rejected_is_safe`` and
    ``chosen_severity_level``/``rejected_severity_level``. The safety labels must be booleans;
    they are required when the loader drops pairs whose responses are both unsafe.

``summarize_from_feedback``
    OpenAI summarize-from-feedback "comparisons": ``info`` (``id``, ``post``, ``title``,
    ``subreddit``; CNN/DM rows have ``post`` null and ``article``/``site`` instead),
    ``summaries`` (two objects with ``text``, ``policy``, ``note``), ``choice`` (0 or 1),
    ``worker``, ``batch``, ``split``, ``extra.confidence``. The prompt is built as::

        SUBREDDIT: r/{subreddit}
        TITLE: {title}
        POST: {post}
        TL;DR:

    for Reddit posts and as::

        ARTICLE: {article}
        TL;DR:

    for news articles (no trailing space or newline after ``TL;DR:``). Chosen is
    ``summaries[choice].text`` and rejected the other summary, both stripped of leading and
    trailing whitespace (the dataset stores summaries with a leading space). ``meta`` keeps
    ``id``, ``worker``, ``confidence``, ``batch``, ``split``, ``site`` and the two policies.

``hh_rlhf``
    Anthropic/hh-rlhf: only ``chosen`` and ``rejected``, each a whole transcript of turns
    ``"\\n\\nHuman: ..."`` and ``"\\n\\nAssistant: ..."``. Read as published: the prompt is the
    shared text up to the last ``"\\n\\nAssistant:"`` marker that lies wholly before the first
    character where chosen and rejected differ (and follows a Human turn), split into turns
    (Human -> ``user``, Assistant -> ``assistant``); each response is everything after that marker.
    So an answer that itself contains ``"\\n\\nAssistant:"`` stays whole, and a pair that differs
    at an earlier answer keeps the rest of each conversation as its response. One space after each
    ``Human:``/``Assistant:`` marker is removed; other text is kept as is. A pair that differs
    before any such marker shares no prompt (an "unsplittable transcript" row problem).

SFT formats (:data:`SFT_ADAPTERS`, TRL's standard SFT formats plus our prompt/response rows):
``prompt`` (``prompt``, ``response``), ``prompt_completion`` (``prompt``, ``completion``: strings or
lists of messages), ``messages`` (a conversation; the target is its final assistant turn, the
earlier messages are the prompt) and ``text`` (language modelling).

Errors raised here name the row's problem kind (``err.kind``: missing field, wrong type, bad
label, bad messages, unsplittable transcript, ...); the loader counts a row with such an error
as skipped under ``"kind: field"``, or raises it when strict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from seq2seq_rm.data.records import Message, Origin, PreferenceRecord, Prompt, PromptRecord, TextRecord
from seq2seq_rm.errors import DataError

ROLES = ("system", "user", "assistant", "tool")

# An adapter returns the record and the names of the source fields holding chosen and
# rejected, so a content problem found later (empty response) can name the right column.
Converted = tuple[PreferenceRecord, str, str]
Adapter = Callable[..., Converted]


# What kind of row problem an error is: the loader counts skipped rows by "kind: field".
MISSING, WRONG_TYPE, BAD_LABEL, BAD_MESSAGES, UNSPLITTABLE, PROMPTS_DIFFER = (
    "missing field", "wrong type", "bad label", "bad messages", "unsplittable transcript",
    "chosen and rejected contexts differ",
)


def skip_reason(err: DataError) -> str:
    """The reason under which a row-level DataError is counted as a skip."""
    kind = getattr(err, "kind", None) or "invalid row"
    return f"{kind}: {err.field}" if err.field else kind


class RowContext:
    """The file and row being converted, for error messages.

    ``columns`` maps the names the adapters use (``prompt``, ``chosen``, ...) to the dataset's own
    column names (the ``columns`` option), so errors name the column the user can find in the file.
    """

    def __init__(self, file: str, row: int, columns: dict[str, str] | None = None):
        self.file, self.row, self.columns = file, row, columns or {}

    def error(self, field: str | None, message: str, kind: str = WRONG_TYPE) -> DataError:
        if field is not None:
            head, sep, rest = field.partition(".")
            if head in self.columns:
                field = self.columns[head] + sep + rest
        err = DataError(message, self.file, self.row, field)
        err.kind = kind  # how the loader counts it when the row is skipped
        return err

    @property
    def origin(self) -> Origin:
        return Origin(self.file, self.row)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def require(row: dict, key: str, ctx: RowContext, field: str | None = None) -> Any:
    """The value of a required column; a missing or null one is an error."""
    field = field or key
    if key not in row:
        name = ctx.columns.get(key, key) if field == key else key
        raise ctx.error(field, f"missing required column '{name}' (columns found: {sorted(row)})", MISSING)
    if row[key] is None:
        # Parquet and datasets folders fill absent keys with null, so treat it like missing.
        raise ctx.error(field, "required value is null", MISSING)
    return row[key]


def require_str(row: dict, key: str, ctx: RowContext, field: str | None = None) -> str:
    value = require(row, key, ctx, field)
    if not isinstance(value, str):
        raise ctx.error(field or key, f"expected a string, got {_type_name(value)} {value!r:.60}")
    return value


def require_binary_id(row: dict, key: str, ctx: RowContext, what: str = "0 or 1") -> int:
    """A 0/1 index column (``bool`` is rejected: ``True`` is not a response id)."""
    value = require(row, key, ctx)
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise ctx.error(key, f"expected {what}, got {value!r:.60}", BAD_LABEL)
    return value


def validate_messages(value: Any, ctx: RowContext, field: str, *, allow_empty: bool = True) -> list[Message]:
    """Check a list of chat messages and return copies holding only role and content."""
    if not isinstance(value, list):
        raise ctx.error(field, f"expected a list of messages, got {_type_name(value)}")
    if not value and not allow_empty:
        raise ctx.error(field, "expected at least one message, got an empty list", BAD_MESSAGES)
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ctx.error(
                field, f"message {i}: expected an object with 'role' and 'content', got {_type_name(m)}", BAD_MESSAGES
            )
        for key in ("role", "content"):
            if key not in m or m[key] is None:
                raise ctx.error(field, f"message {i}: missing '{key}'", BAD_MESSAGES)
            if not isinstance(m[key], str):
                raise ctx.error(field, f"message {i}: '{key}' must be a string, got {_type_name(m[key])}",
                                BAD_MESSAGES)
        if m["role"] not in ROLES:
            raise ctx.error(field, f"message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}",
                            BAD_MESSAGES)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def validate_prompt(value: Any, ctx: RowContext, field: str = "prompt") -> Prompt:
    """A prompt is a string or a list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return validate_messages(value, ctx, field)
    raise ctx.error(field, f"expected a string or a list of messages, got {_type_name(value)}")


# --------------------------------------------------------------------------- standard


def adapt_standard(row: dict, ctx: RowContext) -> Converted:
    prompt = validate_prompt(require(row, "prompt", ctx), ctx)
    chosen = require_str(row, "chosen", ctx)
    rejected = require_str(row, "rejected", ctx)
    return PreferenceRecord(prompt, chosen, rejected, ctx.origin), "chosen", "rejected"


# --------------------------------------------------------------------------- conversational


def final_assistant(messages: list[Message], ctx: RowContext, field: str) -> str:
    """The content of the final message, which must be an assistant message."""
    last = messages[-1]
    if last["role"] != "assistant":
        raise ctx.error(field, f"the final message must have role 'assistant', got {last['role']!r}", BAD_MESSAGES)
    return last["content"]


def adapt_conversational(row: dict, ctx: RowContext) -> Converted:
    chosen_msgs = validate_messages(require(row, "chosen", ctx), ctx, "chosen", allow_empty=False)
    rejected_msgs = validate_messages(require(row, "rejected", ctx), ctx, "rejected", allow_empty=False)
    chosen = final_assistant(chosen_msgs, ctx, "chosen")
    rejected = final_assistant(rejected_msgs, ctx, "rejected")

    if row.get("prompt") is not None:
        prompt: Prompt = validate_prompt(row["prompt"], ctx)
        # Some datasets (e.g. HuggingFaceH4/ultrafeedback_binarized) repeat the prompt at the
        # start of chosen and rejected; skip the repetition rather than doubling the prompt.
        as_messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        n = len(as_messages)
        repeated = (
            min(len(chosen_msgs), len(rejected_msgs)) > n
            and chosen_msgs[:n] == as_messages == rejected_msgs[:n]
        )
        start = n if repeated else 0
    else:
        # Implicit prompt: the shared prefix, never including either final message.
        start = 0
        limit = min(len(chosen_msgs), len(rejected_msgs)) - 1
        while start < limit and chosen_msgs[start] == rejected_msgs[start]:
            start += 1
        prompt = chosen_msgs[:start]

    # Messages between the prompt and the final answer belong to the context both
    # responses answer, so they must be the same on both sides.
    extra_c, extra_r = chosen_msgs[start:-1], rejected_msgs[start:-1]
    if extra_c != extra_r:
        raise ctx.error(
            "rejected",
            "chosen and rejected differ before their final assistant message "
            f"({len(extra_c)} vs {len(extra_r)} earlier messages after the prompt)",
            PROMPTS_DIFFER,
        )
    if extra_c:
        if isinstance(prompt, str):
            raise ctx.error(
                "chosen",
                "chosen has several messages but the prompt is a string; "
                "give the prompt as a list of messages",
                BAD_MESSAGES,
            )
        prompt = list(prompt) + extra_c
    return PreferenceRecord(prompt, chosen, rejected, ctx.origin), "chosen", "rejected"


# --------------------------------------------------------------------------- PKU-SafeRLHF

PKU_TEXT_FIELDS = ("prompt", "response_0", "response_1")


def _pku_safe(row: dict, idx: int, ctx: RowContext, required: bool) -> bool | None:
    key = f"is_response_{idx}_safe"
    value = require(row, key, ctx) if required else row.get(key)
    if value is not None and not isinstance(value, bool):
        raise ctx.error(key, f"expected true or false, got {value!r:.60}", BAD_LABEL)
    return value


def adapt_pku_saferlhf(row: dict, ctx: RowContext, *, preference: str = "better",
                       require_safety: bool = False) -> Converted:
    """PKU-SafeRLHF: ``preference`` picks the label defining chosen; ``require_safety`` makes the
    ``is_response_{0,1}_safe`` labels required (to drop pairs where both responses are unsafe)."""
    prompt = require_str(row, "prompt", ctx)
    responses = (require_str(row, "response_0", ctx), require_str(row, "response_1", ctx))
    # Both ids are validated when present so a corrupt row is caught whichever one is used.
    ids = {}
    for key in ("better_response_id", "safer_response_id"):
        if key == f"{preference}_response_id" or row.get(key) is not None:
            ids[key] = require_binary_id(row, key, ctx)
    chosen_id = ids[f"{preference}_response_id"]
    safe = [_pku_safe(row, i, ctx, require_safety) for i in (0, 1)]
    meta = {k: v for k, v in row.items() if k not in PKU_TEXT_FIELDS}
    meta["chosen_id"] = chosen_id
    for side, idx in (("chosen", chosen_id), ("rejected", 1 - chosen_id)):
        if safe[idx] is not None:
            meta[f"{side}_is_safe"] = safe[idx]
        level = row.get(f"response_{idx}_severity_level")
        if level is not None:
            meta[f"{side}_severity_level"] = level
    record = PreferenceRecord(prompt, responses[chosen_id], responses[1 - chosen_id], ctx.origin, meta)
    return record, f"response_{chosen_id}", f"response_{1 - chosen_id}"


# --------------------------------------------------------------------------- summarize from feedback

REDDIT_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
ARTICLE_TEMPLATE = "ARTICLE: {article}\nTL;DR:"


def adapt_summarize_from_feedback(row: dict, ctx: RowContext) -> Converted:
    info = require(row, "info", ctx)
    if not isinstance(info, dict):
        raise ctx.error("info", f"expected an object, got {_type_name(info)}")
    if info.get("post") is not None:
        prompt = REDDIT_TEMPLATE.format(
            subreddit=require_str(info, "subreddit", ctx, "info.subreddit"),
            title=require_str(info, "title", ctx, "info.title"),
            post=require_str(info, "post", ctx, "info.post"),
        )
    elif info.get("article") is not None:
        prompt = ARTICLE_TEMPLATE.format(article=require_str(info, "article", ctx, "info.article"))
    else:
        raise ctx.error("info.post", "neither 'post' (Reddit) nor 'article' (CNN/DM) is given", MISSING)

    summaries = require(row, "summaries", ctx)
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = f"{len(summaries)} items" if isinstance(summaries, list) else _type_name(summaries)
        raise ctx.error("summaries", f"expected a list of 2 summaries, got {got}")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise ctx.error("summaries", f"summary {i}: expected an object with 'text', got {_type_name(s)}")
        texts.append(require_str(s, "text", ctx, f"summaries[{i}].text").strip())
    choice = require_binary_id(row, "choice", ctx, what="0 or 1 (an index into 'summaries')")

    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    meta = {
        "id": info.get("id"),
        "worker": row.get("worker"),
        "confidence": extra.get("confidence"),
        "batch": row.get("batch"),
        "split": row.get("split"),
        "site": info.get("site"),
        "chosen_policy": summaries[choice].get("policy"),
        "rejected_policy": summaries[1 - choice].get("policy"),
    }
    record = PreferenceRecord(prompt, texts[choice], texts[1 - choice], ctx.origin, meta)
    return record, f"summaries[{choice}].text", f"summaries[{1 - choice}].text"


# --------------------------------------------------------------------------- Anthropic HH-RLHF

HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_hh_transcript(text: str, ctx: RowContext, field: str) -> list[Message]:
    """Split an HH-RLHF transcript into messages."""
    parts = HH_MARKER.split(text)
    if parts[0].strip():
        # Text before the first marker has no speaker; dropping it would lose content.
        raise ctx.error(field, f"text before the first '\\n\\nHuman:' turn: {parts[0][:40]!r}", UNSPLITTABLE)
    if len(parts) == 1:
        raise ctx.error(field, "no '\\n\\nHuman:' or '\\n\\nAssistant:' turns found", UNSPLITTABLE)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        if content.startswith(" "):
            content = content[1:]
        messages.append({"role": HH_ROLES[speaker], "content": content})
    return messages


HH_ASSISTANT = "\n\nAssistant:"


def adapt_hh_rlhf(row: dict, ctx: RowContext) -> Converted:
    """Read an HH-RLHF pair as published: chosen and rejected are the same conversation up to
    the final answer, so the prompt is their shared text up to the last ``\\n\\nAssistant:``
    marker that lies wholly before their first differing character (and follows a Human turn),
    and each response is everything after that marker (one leading space removed).

    Splitting each transcript at its own last marker instead would break the rows whose
    answer itself contains ``\\n\\nAssistant:`` (the two prompts would then differ).
    """
    chosen, rejected = require_str(row, "chosen", ctx), require_str(row, "rejected", ctx)
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)
    prompt: list[Message] = []
    while cut >= 0:
        prompt = split_hh_transcript(chosen[:cut], ctx, "chosen") if cut else []
        if prompt and prompt[-1]["role"] == "user":
            break
        # An answer that itself holds "\n\nAssistant:": the prompt ends at an earlier marker.
        cut = chosen.rfind(HH_ASSISTANT, 0, cut)
    if cut < 0:
        for field, text in (("chosen", chosen), ("rejected", rejected)):
            if HH_ASSISTANT not in text:
                raise ctx.error(field, "no '\\n\\nAssistant:' turn found", UNSPLITTABLE)
        raise ctx.error(
            "rejected",
            "chosen and rejected differ before an '\\n\\nAssistant:' turn that answers a "
            f"'\\n\\nHuman:' turn (first difference at character {shared}), so they share no prompt",
            UNSPLITTABLE,
        )
    start = cut + len(HH_ASSISTANT)
    responses = [text[start + 1:] if text.startswith(" ", start) else text[start:] for text in (chosen, rejected)]
    return PreferenceRecord(prompt, responses[0], responses[1], ctx.origin), "chosen", "rejected"


# --------------------------------------------------------------------------- detection

ADAPTERS: dict[str, Adapter] = {
    "standard": adapt_standard,
    "conversational": adapt_conversational,
    "pku_saferlhf": adapt_pku_saferlhf,
    "summarize_from_feedback": adapt_summarize_from_feedback,
    "hh_rlhf": adapt_hh_rlhf,
}

EXPECTED_KEYS = {
    "pku_saferlhf": "prompt, response_0, response_1, better_response_id, safer_response_id",
    "summarize_from_feedback": "info, summaries, choice",
    "hh_rlhf": "chosen, rejected (transcripts with '\\n\\nHuman:' turns)",
    "conversational": "[prompt,] chosen, rejected (lists of messages)",
    "standard": "prompt, chosen, rejected",
}


def detect_format(row: dict) -> str | None:
    """The preference format of a row from its keys, or None. Order matters: the
    specific public schemas are tried before the generic TRL ones."""
    keys = set(row)
    if {"response_0", "response_1", "better_response_id"} <= keys:
        return "pku_saferlhf"
    if {"info", "summaries", "choice"} <= keys:
        return "summarize_from_feedback"
    chosen = row.get("chosen")
    if "prompt" not in keys and isinstance(chosen, str) and "\n\nHuman:" in chosen:
        return "hh_rlhf"
    if isinstance(chosen, list) and "rejected" in keys:
        return "conversational"
    # Any types: a wrong-typed value is then reported by the adapter with its field.
    if {"prompt", "chosen", "rejected"} <= keys:
        return "standard"
    return None


def expected_formats_text() -> str:
    return "; ".join(f"{name} ({keys})" for name, keys in EXPECTED_KEYS.items())


# --------------------------------------------------------------------------- SFT formats
#
# TRL's standard SFT formats, plus our prompt/response rows. Each adapter returns the record and
# the name of the column that holds the training target (for messages about it).


def adapt_sft_prompt(row: dict, ctx: RowContext) -> tuple[PromptRecord, str]:
    """``prompt`` (a string or messages) and ``response`` (a string): loss on the response."""
    prompt = validate_prompt(require(row, "prompt", ctx), ctx)
    response = require_str(row, "response", ctx)
    meta = {k: v for k, v in row.items() if k not in ("prompt", "response")}
    return PromptRecord(prompt, response, ctx.origin, meta), "response"


def adapt_prompt_completion(row: dict, ctx: RowContext) -> tuple[PromptRecord, str]:
    """TRL prompt-completion: ``prompt`` and ``completion`` strings, or lists of messages.

    A completion given as messages must end with an assistant message, whose content is the
    target; messages before it (e.g. a tool call and its result) join the prompt.
    """
    prompt = validate_prompt(require(row, "prompt", ctx), ctx)
    completion = require(row, "completion", ctx)
    if isinstance(completion, list):
        messages = validate_messages(completion, ctx, "completion", allow_empty=False)
        target = final_assistant(messages, ctx, "completion")
        if len(messages) > 1:
            if isinstance(prompt, str):
                raise ctx.error("completion", "a completion of several messages needs the prompt as a list of "
                                "messages", BAD_MESSAGES)
            prompt = prompt + messages[:-1]
    elif isinstance(completion, str):
        target = completion
    else:
        raise ctx.error("completion", f"expected a string or a list of messages, got {_type_name(completion)}")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    return PromptRecord(prompt, target, ctx.origin, meta), "completion"


def adapt_messages(row: dict, ctx: RowContext) -> tuple[PromptRecord, str]:
    """TRL conversational: ``messages``, a list ending with an assistant message. The loss is on
    that final assistant turn; every earlier message is the prompt."""
    messages = validate_messages(require(row, "messages", ctx), ctx, "messages", allow_empty=False)
    target = final_assistant(messages, ctx, "messages")
    if len(messages) < 2:
        raise ctx.error("messages", "expected at least one message before the final assistant message",
                        BAD_MESSAGES)
    meta = {k: v for k, v in row.items() if k != "messages"}
    return PromptRecord(messages[:-1], target, ctx.origin, meta), "messages"


def adapt_text(row: dict, ctx: RowContext) -> tuple[TextRecord, str]:
    """TRL language modelling: ``text``; the loss is on every token."""
    text = require_str(row, "text", ctx)
    meta = {k: v for k, v in row.items() if k != "text"}
    return TextRecord(text, ctx.origin, meta), "text"


SFT_ADAPTERS = {
    "prompt": adapt_sft_prompt,
    "prompt_completion": adapt_prompt_completion,
    "messages": adapt_messages,
    "text": adapt_text,
}

SFT_EXPECTED_KEYS = {
    "prompt": "prompt, response (loss on the response)",
    "prompt_completion": "prompt, completion (strings or lists of messages; loss on the completion)",
    "messages": "messages (a list of messages; loss on the final assistant turn)",
    "text": "text (language modelling; loss on every token)",
}

# What the loss is on, by SFT format (recorded in sft.json).
SFT_LOSS_ON = {
    "prompt": "response",
    "prompt_completion": "completion",
    "messages": "final assistant turn",
    "text": "every token",
    **{name: "chosen" for name in ADAPTERS},
}


def detect_sft_format(row: dict) -> str | None:
    """The SFT format of a row (not a preference format) from its keys, or None."""
    keys = set(row)
    if "messages" in keys and "chosen" not in keys:
        return "messages"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "prompt" in keys and "response" in keys:
        return "prompt"
    if "text" in keys and "prompt" not in keys and "chosen" not in keys:
        return "text"
    return None


def sft_formats_text() -> str:
    """Every format ``sft`` reads, with its columns."""
    sft = "; ".join(f"{name} ({keys})" for name, keys in SFT_EXPECTED_KEYS.items())
    return f"{sft}; or a preference format, trained on chosen: {expected_formats_text()}"
