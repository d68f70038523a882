"""Text helpers shared by the bundled tasks: number words, tokens, sentences, refusal phrases."""

from __future__ import annotations

import hashlib
import re

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_UNIT_VAL = {w: i for i, w in enumerate(UNITS)}
_TENS_VAL = {w: i * 10 for i, w in enumerate(TENS) if w}

STOPWORDS = frozenset("""
a an the and or but if then so of to in on at for with by from as is are was were be been being it its
this that these those i you he she we they me my your our their his her them us do does did can could
will would should may might must not no yes than too very just also about into over under up down out
off all any some more most other such only own same what which who whom how when where why there here
have has had get got make made use one ones s t don can't won't i'm it's you're let know hope
""".split())

_NOT_A_NUMBER_BEFORE_ONE = frozenset({"no", "any", "some", "every", "each", "the", "this", "that", "which"})
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENT = re.compile(r"(?<=[.!?])\s+")


def num_to_words(n: int) -> str:
    """0..999 as English words ("forty two", "one hundred and five")."""
    if n < 0 or n > 999:
        raise ValueError(f"out of range: {n}")
    if n < 20:
        return UNITS[n]
    if n < 100:
        t, u = divmod(n, 10)
        return TENS[t] + ("" if u == 0 else f" {UNITS[u]}")
    h, rest = divmod(n, 100)
    return f"{UNITS[h]} hundred" + ("" if rest == 0 else f" and {num_to_words(rest)}")


def normalize(text: str) -> str:
    """Lower case, straight apostrophes, "can not" -> "cannot", single spaces."""
    t = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    t = re.sub(r"\bcan not\b", "cannot", t)
    return re.sub(r"\s+", " ", t).strip()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text).replace("-", " "))


def word_count(text: str) -> int:
    return len(text.split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text.strip()) if s.strip()]


def parse_numbers(text: str) -> list[int]:
    """Every number in ``text``, in order, written in digits or in words up to 999.

    "forty two" and "forty-two" give 42, "one hundred and five" gives 105, "12" gives 12.
    """
    out: list[int] = []
    for chunk in re.split(r"[,.;:!?()\n]", text):
        out.extend(_parse_chunk(tokens(chunk)))
    return out


def _parse_chunk(toks: list[str]) -> list[int]:
    out: list[int] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.isdigit():
            out.append(int(t))
            i += 1
            continue
        if t == "one" and i > 0 and toks[i - 1] in _NOT_A_NUMBER_BEFORE_ONE:
            i += 1
            continue
        if t in _UNIT_VAL or t in _TENS_VAL:
            val, j = 0, i
            if toks[j] in _UNIT_VAL and j + 1 < len(toks) and toks[j + 1] == "hundred":
                val, j = _UNIT_VAL[toks[j]] * 100, j + 2
                if j < len(toks) and toks[j] == "and" and j + 1 < len(toks) and (
                        toks[j + 1] in _UNIT_VAL or toks[j + 1] in _TENS_VAL):
                    j += 1
            if j < len(toks) and toks[j] in _TENS_VAL:
                val += _TENS_VAL[toks[j]]
                j += 1
                if j < len(toks) and toks[j] in _UNIT_VAL and 0 < _UNIT_VAL[toks[j]] < 10:
                    val += _UNIT_VAL[toks[j]]
                    j += 1
            elif j < len(toks) and toks[j] in _UNIT_VAL and (j == i or val):
                val += _UNIT_VAL[toks[j]]
                j += 1
            out.append(val)
            i = max(j, i + 1)
            continue
        i += 1
    return out


def bucket(key: str, buckets: int = 100) -> int:
    """A stable hash bucket of ``key`` (independent of PYTHONHASHSEED)."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % buckets


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def prompt_str(prompt) -> str:
    """The prompt as text: a string, or the content of the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return (users[-1] if users else (prompt[-1].get("content", "") if prompt else "")).strip()


def repeated_sentences(text: str) -> int:
    """How many sentences repeat an earlier one (exactly, or >= 60 % of their word 3-grams)."""
    seen: set[tuple[str, ...]] = set()
    seen_sents: set[str] = set()
    rep = 0
    for s in sentences(text):
        toks = tokens(s)
        key = " ".join(toks)
        grams = {tuple(toks[i:i + 3]) for i in range(max(0, len(toks) - 2))}
        if key and key in seen_sents:
            rep += 1
        elif grams and len(grams & seen) / len(grams) >= 0.6:
            rep += 1
        seen_sents.add(key)
        seen |= grams
    return rep
