"""Instruction following with a checkable answer: arithmetic in words, sorting, counting.

Operations in train/test: ``add`` ("What is seven plus five?"), ``multiply``,
``sort_alpha`` (words alphabetically), ``sort_num`` (number words, smallest first),
``count`` ("How many animals are in this list: ...?"). OOD (``OOD_DESCRIPTION``): the
unseen operations ``subtract`` and ``largest``.

Response kinds: ``correct`` (concise, the reference), ``chatty`` (correct, padded with
chatter), ``wrong`` (concise, wrong answer), ``wrong_chatty``.

ORACLE (:meth:`InstructTask.score`): ``0.8 * correctness + 0.2 * concision`` where
correctness is 1 for the right answer, 0.3 for the right answer among other candidate
answers (or sorted items all present in a wrong order), 0 otherwise, and concision is
``max(0, 1 - extra_words / 20)`` with ``extra_words`` the words beyond the reference's.
So correct (1.0) > chatty (about 0.9) > wrong (<= 0.2). The problem is parsed back from
the prompt text, numbers in words or digits.
"""

from __future__ import annotations

import random
import re

from ._text import cap, num_to_words, parse_numbers, prompt_str, tokens, word_count
from .base import Task, TaskExample

GROUPS = {
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum"),
    "animals": ("cat", "dog", "horse", "mouse", "tiger", "zebra", "rabbit", "eagle", "goat", "sheep"),
}
SINGULAR = {"fruits": "fruit", "animals": "animal"}
OBJECTS = ("chair", "lamp", "table", "spoon", "clock", "book", "cup", "bag")
OPS = ("add", "multiply", "sort_alpha", "sort_num", "count")
OOD_OPS = ("subtract", "largest")
OOD_DESCRIPTION = f"operations {', '.join(OOD_OPS)} are held out of train and test"
TEMPLATES = {
    "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "Please compute {a} plus {b}."),
    "multiply": ("What is {a} times {b}?", "Multiply {a} by {b}.", "Please compute {a} times {b}."),
    "subtract": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "Please compute {a} minus {b}."),
    "sort_alpha": ("Sort these words alphabetically: {items}.", "Put these words in alphabetical order: {items}."),
    "sort_num": ("Sort these numbers from smallest to largest: {items}.",
                 "Put these numbers in order, smallest first: {items}."),
    "count": ("How many {group} are in this list: {items}?", "Count the {group} in this list: {items}."),
    "largest": ("Which number is the largest: {items}?", "What is the biggest of these numbers: {items}?"),
}
CHAT_BEFORE = ("Great question!", "Sure, happy to help.", "Let me think about this.", "Of course!")
CHAT_AFTER = ("Let me know if you need anything else.", "I hope this helps!", "Thanks for asking.",
              "Feel free to ask more questions.")


def _list(items: list[str]) -> str:
    return ", ".join(items)


def _compile(t: str) -> re.Pattern:
    pat = re.escape(t)
    pat = pat.replace(r"\{a\}", r"(?P<a>[a-z0-9 \-]+?)").replace(r"\{b\}", r"(?P<b>[a-z0-9 \-]+?)")
    pat = pat.replace(r"\{items\}", r"(?P<items>[a-z0-9 ,\-]+?)").replace(r"\{group\}", r"(?P<group>[a-z]+)")
    return re.compile(f"^{pat}$", re.IGNORECASE)


_PATTERNS = [(op, _compile(t)) for op, ts in TEMPLATES.items() for t in ts]


def _answer(op: str, a: int | None, b: int | None, items: list[str], group: str | None):
    """(answer value, answer as text, concise reference)."""
    if op in ("add", "multiply", "subtract"):
        val = {"add": a + b, "multiply": a * b, "subtract": a - b}[op]
        word = {"add": "plus", "multiply": "times", "subtract": "minus"}[op]
        return val, num_to_words(val), f"{cap(num_to_words(a))} {word} {num_to_words(b)} is {num_to_words(val)}."
    if op == "sort_alpha":
        s = sorted(items)
        return s, _list(s), f"In order: {_list(s)}."
    if op == "sort_num":
        s = sorted(items, key=lambda w: parse_numbers(w)[0])
        return s, _list(s), f"In order: {_list(s)}."
    if op == "count":
        n = sum(1 for w in items if w in GROUPS[group])
        noun = SINGULAR[group] if n == 1 else group
        return n, num_to_words(n), f"The list has {num_to_words(n)} {noun}."
    if op == "largest":
        best = max(items, key=lambda w: parse_numbers(w)[0])
        return parse_numbers(best)[0], best, f"The largest is {best}."
    raise ValueError(op)


class InstructTask(Task):
    name = "instruct"
    OOD_DESCRIPTION = OOD_DESCRIPTION

    def _make(self, op: str, t: int, a=None, b=None, items=None, group=None) -> TaskExample:
        items = list(items or [])
        fields = {"a": num_to_words(a) if a is not None else "", "b": num_to_words(b) if b is not None else "",
                  "items": _list(items), "group": group or ""}
        prompt = TEMPLATES[op][t].format(**fields)
        val, text, ref = _answer(op, a, b, items, group)
        key = f"{op}|{a}|{b}|{_list(items)}|{group}"
        meta = {"op": op, "a": a, "b": b, "items": items, "group": group, "answer": text,
                "answer_value": val, "reference": ref, "split_key": key, "ood": op in OOD_OPS}
        return TaskExample(prompt, op, meta)

    def _draw(self, family: str, rng: random.Random) -> TaskExample:
        op = rng.choice(OOD_OPS if family == "ood" else OPS)
        t = rng.randrange(len(TEMPLATES[op]))
        if op in ("add", "subtract"):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            if op == "subtract" and b > a:
                a, b = b, a
            return self._make(op, t, a=a, b=b)
        if op == "multiply":
            return self._make(op, t, a=rng.randint(1, 9), b=rng.randint(1, 9))
        if op == "sort_alpha":
            group = rng.choice(list(GROUPS) + ["objects"])
            pool = GROUPS.get(group, OBJECTS)
            return self._make(op, t, items=rng.sample(pool, rng.randint(3, 5)))
        if op in ("sort_num", "largest"):
            return self._make(op, t, items=[num_to_words(n) for n in rng.sample(range(0, 21), rng.randint(3, 5))])
        group = rng.choice(list(GROUPS))
        other = [w for g, ws in GROUPS.items() if g != group for w in ws] + list(OBJECTS)
        k = rng.randint(1, 4)
        items = rng.sample(GROUPS[group], k) + rng.sample(other, rng.randint(1, 3))
        rng.shuffle(items)
        return self._make("count", t, items=items, group=group)

    def parse(self, prompt) -> TaskExample | None:
        text = prompt_str(prompt)
        for op, pat in _PATTERNS:
            m = pat.match(text)
            if not m:
                continue
            t = next(i for i, tt in enumerate(TEMPLATES[op]) if _compile(tt).pattern == pat.pattern)
            g = m.groupdict()
            try:
                if "a" in g:
                    (a,), (b,) = parse_numbers(g["a"]), parse_numbers(g["b"])
                    return self._make(op, t, a=a, b=b)
                items = [w.strip().lower() for w in g["items"].split(",") if w.strip()]
                if op in ("sort_num", "largest"):
                    if any(len(parse_numbers(w)) != 1 for w in items):
                        return None
                group = g.get("group")
                if op == "count" and group not in GROUPS:
                    return None
                return self._make(op, t, items=items, group=group)
            except ValueError:
                return None
        return None

    # ---- responses --------------------------------------------------------------------
    def _wrong(self, ex: TaskExample, rng: random.Random) -> str:
        op, m = ex.meta["op"], ex.meta
        if op in ("add", "multiply", "subtract", "count"):
            val = m["answer_value"]
            bad = max(0, val + rng.choice([-3, -2, -1, 1, 2, 3]))
            if bad == val:
                bad = val + 1
            if op == "count":
                noun = SINGULAR[m["group"]] if bad == 1 else m["group"]
                return f"The list has {num_to_words(bad)} {noun}."
            word = {"add": "plus", "multiply": "times", "subtract": "minus"}[op]
            return f"{cap(num_to_words(m['a']))} {word} {num_to_words(m['b'])} is {num_to_words(bad)}."
        if op == "largest":
            best = m["answer"]
            return f"The largest is {rng.choice([w for w in m['items'] if w != best])}."
        s = list(m["answer_value"])
        i, j = rng.sample(range(len(s)), 2)
        s[i], s[j] = s[j], s[i]
        return f"In order: {_list(s)}."

    def responses(self, ex: TaskExample, rng: random.Random) -> dict[str, str]:
        ref = ex.meta["reference"]
        wrong = self._wrong(ex, rng)

        def chat(text: str) -> str:
            parts = [text]
            r = rng.random()
            if r < 0.7:
                parts.insert(0, rng.choice(CHAT_BEFORE))
            if r > 0.3:
                parts.append(rng.choice(CHAT_AFTER))
            return " ".join(parts)

        return {"correct": ref, "chatty": chat(ref), "wrong": wrong, "wrong_chatty": chat(wrong)}

    def reference(self, ex: TaskExample) -> str:
        return ex.meta["reference"]

    def pair_kinds(self, ex: TaskExample) -> list[tuple[str, str]]:
        return [("correct", "chatty"), ("correct", "wrong"), ("chatty", "wrong"), ("correct", "wrong_chatty"),
                ("chatty", "wrong_chatty"), ("wrong", "wrong_chatty")]

    # ---- labels and oracle ------------------------------------------------------------
    def _correctness(self, ex: TaskExample, response: str) -> float:
        m = ex.meta
        if m["op"] in ("sort_alpha", "sort_num"):
            want = list(m["answer_value"])
            if m["op"] == "sort_alpha":
                listed = set(want)
                seq = [w for w in tokens(response) if w in listed]
            else:
                values = {parse_numbers(w)[0]: w for w in want}
                seq = [values[n] for n in parse_numbers(response) if n in values]
            seen: list[str] = []
            for w in seq:
                if w not in seen:
                    seen.append(w)
            if seen == want:
                return 1.0
            return 0.3 if set(seen) == set(want) else 0.0
        # Numbers: drop one echo of each operand, then the rest must all be the answer; when
        # only operands were written (e.g. "The largest is sixteen."), the last one counts.
        ans = m["answer_value"]
        nums = parse_numbers(response)
        rest = list(nums)
        for x in parse_numbers(ex.prompt):
            if x in rest:
                rest.remove(x)
        if not rest:
            rest = nums[-1:]
        if rest and all(n == ans for n in rest):
            return 1.0
        return 0.3 if ans in rest else 0.0

    def labels(self, prompt, response: str) -> dict:
        ex = self.parse(prompt)
        length = word_count(response)
        if ex is None:
            return {"op": None, "correct": False, "correctness": 0.0, "answer": None, "length": length,
                    "ideal_length": None}
        c = self._correctness(ex, response)
        return {"op": ex.meta["op"], "correct": c == 1.0, "correctness": c, "answer": ex.meta["answer"],
                "length": length, "ideal_length": word_count(ex.meta["reference"])}

    def score(self, prompt, response: str) -> float:
        if not response.strip():
            return 0.0
        lab = self.labels(prompt, response)
        if lab["op"] is None:
            return 0.0
        extra = max(0, lab["length"] - lab["ideal_length"])
        concision = max(0.0, 1.0 - extra / 20)
        return round(0.8 * lab["correctness"] + 0.2 * concision, 6)


TASK = InstructTask()
