"""Source/target layouts shared by training and reward extraction.

Training and extraction must lay tokens out identically, so both go through these
functions, and an RM folder records the ``TemplateConfig`` it was trained with.

Layouts (``T`` = the tokenizer, ``eos`` = its EOS id):

* policy prompt  ``P(x)``: plain ``prompt_format`` or the chat template with a generation prompt.
* response ids   ``R(y) = T(y) + [eos]``: the response as the policy would emit it. A policy's
  sampled ids are used as they are (with or without a final EOS).
* scalar RM input ``P(x) ++ R(y)``: the score is read at the last response token.
* seq2seq RM source ``S(x, y)``: plain ``source_format`` (prompt, response under review, a
  marker) or, in chat style, ``[user: x, assistant: y, user: rewrite_instruction]`` with a
  generation prompt. The target is ``R(y*)`` for the RM's own version ``y*``.

Plain style is for base models and the project's tiny models trained from scratch; chat
style for instruction-tuned models whose tokenizer has a chat template.
"""

from __future__ import annotations

from ..config import TemplateConfig
from ..errors import ConfigError
from .records import Prompt, prompt_text


def resolve_style(template: TemplateConfig, tokenizer) -> str:
    if template.style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template.style not in ("plain", "chat"):
        raise ConfigError(f"template.style must be plain, chat or auto, not {template.style!r}")
    if template.style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("template.style=chat but the tokenizer has no chat template")
    return template.style


def _messages(prompt: Prompt, template: TemplateConfig) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if template.system_prompt and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": template.system_prompt})
    return msgs


def render_prompt(prompt: Prompt, template: TemplateConfig, tokenizer, style: str | None = None) -> str:
    """The text the policy continues with its response (``P(x)``)."""
    style = style or resolve_style(template, tokenizer)
    if style == "chat":
        return tokenizer.apply_chat_template(
            _messages(prompt, template), tokenize=False, add_generation_prompt=True
        )
    return template.prompt_format.format(prompt=prompt_text(prompt))


def render_source(prompt: Prompt, response: str, template: TemplateConfig, tokenizer, style: str | None = None) -> str:
    """The seq2seq RM's source ``S(x, y)``: prompt, the response under review, and a cue to rewrite."""
    style = style or resolve_style(template, tokenizer)
    if style == "chat":
        msgs = _messages(prompt, template) + [
            {"role": "assistant", "content": response},
            {"role": "user", "content": template.rewrite_instruction},
        ]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return template.source_format.format(prompt=prompt_text(prompt), response=response)


def encode_text(text: str, tokenizer, style: str) -> list[int]:
    """Token ids of a rendered prompt/source. Chat templates carry their own special tokens."""
    return tokenizer(text, add_special_tokens=(style == "plain")).input_ids


def encode_response(response: str, tokenizer) -> list[int]:
    """``R(y)``: response ids followed by EOS, the way a policy emits a finished response."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; set one (tokenizer.eos_token) before training")
    return tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
