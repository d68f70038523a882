"""News summarisation: short generated articles with 2-4 key facts among filler sentences.

An article has 4-8 sentences: 2-4 KEY FACTS (who did what, numbers, places, months), each
rendered from a topic template, plus generic filler sentences. Every fact's *key tokens*
are the entity words it contains (names, places, organisations, teams, things, months and
numbers, numbers matched by value whether written in words or digits); filler sentences
contain none, so the facts can be recovered from the prompt text alone.

Summary kinds: ``full`` (every fact, compact, no filler: the IDEAL summary, whose word
count is ``labels()["ideal_length"]``), ``partial`` (at least half the facts, not all),
``wrong`` (every fact but one entity replaced by a wrong one: a wrong number, name or
place), ``long`` (full plus 1-3 filler sentences), ``repetitive`` (full plus a repeated
fact), ``long_partial`` (partial plus filler).

ORACLE (:meth:`SummarizeTask.score`), clipped to [0, 1]:
``coverage - 0.5 * errors - 0.2 * repeats - 0.1 * min(filler, 3) - 0.005 * max(0, words - 2 * ideal)``
where ``coverage`` is the mean over facts of the share of the fact's key tokens present,
``errors`` counts entity words absent from the article (hallucinated or wrong values),
``repeats`` counts sentences repeating an earlier one, ``filler`` counts summary sentences
with no key token. So full (1.0) > partial (>= 0.5) > wrong (< 0.5).

OOD (``OOD_DESCRIPTION``): the topics ``OOD_TOPICS`` (weather, school) have their own
fact templates and fillers and never appear in train or test.
"""

from __future__ import annotations

import math
import random
import re
from functools import cached_property

from ._text import num_to_words, parse_numbers, prompt_str, repeated_sentences, sentences, tokens, word_count
from .base import Task, TaskExample

FIRST = ("Lena", "Omar", "Grace", "Victor", "Nina", "Samuel", "Priya", "Tomas", "Clara", "Felix",
         "Rosa", "Hugo")
LAST = ("Ortiz", "Chen", "Walker", "Novak", "Okafor", "Berg", "Silva", "Kim", "Moreau", "Haddad",
        "Quinn", "Larsen")
PLACES = ("Brookfield", "Riverton", "Eastport", "Millbrook", "Ashford", "Lakeview", "Northgate",
          "Pinecrest", "Stonebridge", "Westhaven", "Redcliff", "Fairmont")
ORGS = ("Brightway", "Kestrel", "Northwind", "Solara", "Ironleaf", "Bluepeak", "Cobalt", "Vantage")
MASCOTS = ("Hawks", "Lions", "Rovers", "Comets", "Bears", "Sharks")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
THINGS = {
    "building": ("library", "clinic", "museum", "stadium", "bakery"),
    "project": ("roads", "parks", "buses", "bridges", "schools"),
    "facility": ("factory", "warehouse", "office", "store"),
    "animal": ("frogs", "beetles", "birds", "bats", "spiders"),
    "club": ("chess", "robot", "drama", "science", "music"),
}
NUMBERS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 18, 20, 25, 30, 40, 50, 60, 75, 80, 90)
TOPICS = ("city", "business", "sports", "science")
OOD_TOPICS = ("weather", "school")
OOD_DESCRIPTION = f"article topics {', '.join(OOD_TOPICS)} are held out of train and test"
INSTRUCTIONS = ("Summarize the article below.", "Write a short summary of this article.",
                "Give a brief summary of the news below.")

# (doc form, summary form); slots: {first}/{last}, {place}/{place2}, {org}/{org2},
# {team}/{team2} (mascots), {num}/{num2} (number words), {month}, and THINGS keys.
FACTS = {
    "city": (
        ("Mayor {first} {last} opened a new {building} in {place} this week.",
         "Mayor {first} {last} opened a {building} in {place}."),
        ("The city council voted to spend {num} million dollars on new {project}.",
         "The council will spend {num} million dollars on {project}."),
        ("About {num2} residents of {place2} came to the public meeting.",
         "{Num2} residents of {place2} came to the meeting."),
        ("Work on the new {project2} in {place3} should finish in {month}.",
         "The {project2} in {place3} should be done in {month}."),
    ),
    "business": (
        ("{org} said it will hire {num} new workers at its {facility} in {place}.",
         "{org} will hire {num} workers at its {facility} in {place}."),
        ("Chief executive {first} {last} said sales grew by {num2} percent this year.",
         "{first} {last} said sales grew {num2} percent."),
        ("The company also agreed to buy the smaller firm {org2} from {place2}.",
         "It agreed to buy {org2} from {place2}."),
        ("The deal is expected to close in {month}.", "The deal should close in {month}."),
    ),
    "sports": (
        ("The {team} beat the {team2} by {num} points on Saturday night.",
         "The {team} beat the {team2} by {num} points."),
        ("Star player {first} {last} scored {num2} points in the second half.",
         "{first} {last} scored {num2} points."),
        ("The next game will be played in {place} in {month}.",
         "The next game is in {place} in {month}."),
        ("Coach {first2} {last2} said the team had trained for {num3} weeks.",
         "Coach {first2} {last2} said they trained for {num3} weeks."),
    ),
    "science": (
        ("Researchers at the University of {place} found {num} new kinds of {animal}.",
         "Researchers in {place} found {num} new kinds of {animal}."),
        ("The study was led by Doctor {first} {last} and a small team.",
         "Doctor {first} {last} led the study."),
        ("The team spent {num2} months working in the forests near {place2}.",
         "The team worked {num2} months near {place2}."),
        ("The full results will be published in {month}.", "The results come out in {month}."),
    ),
    "weather": (
        ("A storm brought {num} centimetres of snow to {place} on Tuesday.",
         "A storm brought {num} centimetres of snow to {place}."),
        ("Forecaster {first} {last} said the winds reached {num2} kilometres an hour.",
         "{first} {last} said winds reached {num2} kilometres an hour."),
        ("About {num3} homes in {place2} lost power during the night.",
         "{Num3} homes in {place2} lost power."),
        ("The roads to {place3} will stay closed until {month}.",
         "Roads to {place3} stay closed until {month}."),
    ),
    "school": (
        ("Principal {first} {last} said {num} students joined the new {club} club.",
         "{Num} students joined the {club} club, said {first} {last}."),
        ("The school in {place} won a prize of {num2} thousand dollars.",
         "The {place} school won {num2} thousand dollars."),
        ("Teachers from {place2} will visit the school in {month}.",
         "Teachers from {place2} visit in {month}."),
        ("The spring fair raised money for {num3} new computers.",
         "The fair paid for {num3} new computers."),
    ),
}
FILLERS = {
    "_all": ("Many people followed the news closely.", "Some people said they were pleased.",
             "More details are expected in the coming days.", "Not everyone agreed with the plan.",
             "Local leaders called it an important step.", "The news spread quickly online.",
             "Officials asked people to stay patient.", "It was a busy week for the region."),
    "city": ("The meeting lasted late into the evening.", "Several people asked questions about cost."),
    "business": ("Shares moved little after the news.", "Analysts said the market remains calm."),
    "sports": ("Fans cheered loudly through the night.", "The crowd was the largest of the season."),
    "science": ("Other scientists called the work careful.", "The area is hard to reach by car."),
    "weather": ("Drivers were told to take extra care.", "Many people stayed at home all day."),
    "school": ("Parents said the mood was cheerful.", "The children had prepared for weeks."),
}

_WORD_ENTITIES = frozenset(w.lower() for w in FIRST + LAST + PLACES + ORGS + MASCOTS + MONTHS) | frozenset(
    w for vals in THINGS.values() for w in vals)
_ENTITY_TYPES = {**{w.lower(): "first" for w in FIRST}, **{w.lower(): "last" for w in LAST},
                 **{w.lower(): "place" for w in PLACES}, **{w.lower(): "org" for w in ORGS},
                 **{w.lower(): "team" for w in MASCOTS}, **{w.lower(): "month" for w in MONTHS},
                 **{w: t for t, vals in THINGS.items() for w in vals}}
_VALUES = {"first": FIRST, "last": LAST, "place": PLACES, "org": ORGS, "team": MASCOTS, "month": MONTHS,
           **THINGS}


def key_tokens(text: str) -> set[str]:
    """Entity words of ``text`` (lower case) plus its numbers as ``#n``."""
    out = {w for w in tokens(text) if w in _WORD_ENTITIES}
    out |= {f"#{n}" for n in parse_numbers(text)}
    return out


def _fill(rng: random.Random, topic: str, k: int) -> list[tuple[str, str]]:
    templates = FACTS[topic]
    idx = sorted(rng.sample(range(len(templates)), k))
    firsts, lasts = rng.sample(FIRST, 2), rng.sample(LAST, 2)
    places, orgs, teams = rng.sample(PLACES, 3), rng.sample(ORGS, 2), rng.sample(MASCOTS, 2)
    nums = [num_to_words(n) for n in rng.sample(NUMBERS, 3)]
    slots = {"first": firsts[0], "last": lasts[0], "first2": firsts[1], "last2": lasts[1],
             "place": places[0], "place2": places[1], "place3": places[2], "org": orgs[0], "org2": orgs[1],
             "team": teams[0], "team2": teams[1], "num": nums[0], "num2": nums[1], "num3": nums[2],
             "month": rng.choice(MONTHS)}
    for t, vals in THINGS.items():
        a, b = rng.sample(vals, 2)
        slots[t], slots[t + "2"] = a, b
    slots.update({k.capitalize(): v.capitalize() for k, v in list(slots.items()) if k.startswith("num")})
    return [(templates[i][0].format(**slots), templates[i][1].format(**slots)) for i in idx]


class SummarizeTask(Task):
    name = "summarize"
    OOD_DESCRIPTION = OOD_DESCRIPTION

    def _draw(self, family: str, rng: random.Random) -> TaskExample:
        topic = rng.choice(OOD_TOPICS if family == "ood" else TOPICS)
        k = rng.randint(2, 4)
        facts = _fill(rng, topic, k)
        pool = list(FILLERS["_all"] + FILLERS[topic])
        n_fill = rng.randint(max(2, 4 - k), min(4, 8 - k))
        fillers = rng.sample(pool, n_fill)
        rest = [f[0] for f in facts[1:]] + fillers
        rng.shuffle(rest)
        order = [facts[0][0]] + rest
        facts.sort(key=lambda f: order.index(f[0]))  # facts (and the ideal summary) in article order
        doc = " ".join(order)
        prompt = f"{rng.choice(INSTRUCTIONS)}\n\n{doc}"
        meta = {"topic": topic, "facts": [f[0] for f in facts], "fact_summaries": [f[1] for f in facts],
                "fillers": fillers, "split_key": doc, "ood": topic in OOD_TOPICS}
        return TaskExample(prompt, "article", meta)

    def parse(self, prompt) -> TaskExample | None:
        text = prompt_str(prompt)
        parts = text.split("\n\n", 1)
        doc = parts[1] if len(parts) == 2 else text
        facts, fillers = [], []
        for s in sentences(doc):
            (facts if key_tokens(s) else fillers).append(s)
        if not facts:
            return None
        return TaskExample(text, "article", {"facts": facts, "fillers": fillers, "doc": doc})

    # ---- responses --------------------------------------------------------------------
    def responses(self, ex: TaskExample, rng: random.Random) -> dict[str, str]:
        summ = list(ex.meta["fact_summaries"])
        k = len(summ)
        full = " ".join(summ)
        m = rng.randint(math.ceil(k / 2), k - 1)
        keep = sorted(rng.sample(range(k), m))
        partial_s = [summ[i] for i in keep]
        fill = ex.meta["fillers"]
        extra = rng.sample(fill, min(len(fill), rng.randint(1, 3)))
        wrong_s = list(summ)
        j = rng.randrange(k)
        wrong_s[j] = self._corrupt(wrong_s[j], ex, rng)
        rep = list(summ) + [summ[rng.randrange(k)]]

        def mix(parts: list[str], add: list[str]) -> str:
            out = list(parts)
            for s in add:
                out.insert(rng.randint(1, len(out)), s)
            return " ".join(out)

        return {"full": full, "partial": " ".join(partial_s), "wrong": " ".join(wrong_s),
                "long": mix(summ, extra), "repetitive": " ".join(rep), "long_partial": mix(partial_s, extra)}

    def _corrupt(self, sent: str, ex: TaskExample, rng: random.Random) -> str:
        """Replace one entity of ``sent`` by one of the same type absent from the article."""
        doc_keys = set()
        for f in ex.meta["facts"]:
            doc_keys |= key_tokens(f)
        toks = re.findall(r"[A-Za-z]+", sent)
        candidates = [w for w in toks if w.lower() in _ENTITY_TYPES]
        nums = [w for w in toks if parse_numbers(w)]
        if nums and (not candidates or rng.random() < 0.5):
            w = rng.choice(nums)
            n = parse_numbers(w)[0]
            options = [x for x in NUMBERS if f"#{x}" not in doc_keys and x != n]
            new = num_to_words(rng.choice(options))
            new = new.capitalize() if w[:1].isupper() else new
        else:
            w = rng.choice(candidates)
            vals = _VALUES[_ENTITY_TYPES[w.lower()]]
            options = [v for v in vals if v.lower() not in doc_keys]
            new = rng.choice(options)
        return re.sub(rf"\b{w}\b", new, sent, count=1)

    def reference(self, ex: TaskExample) -> str:
        return " ".join(ex.meta["fact_summaries"])

    def pair_kinds(self, ex: TaskExample) -> list[tuple[str, str]]:
        kinds = ("full", "partial", "wrong", "long", "repetitive", "long_partial")
        return [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1:]]

    # ---- labels and oracle ------------------------------------------------------------
    @cached_property
    def _cache(self) -> dict:
        return {}

    def _parsed(self, prompt):
        text = prompt_str(prompt)
        if text not in self._cache:
            if len(self._cache) > 20000:
                self._cache.clear()
            ex = self.parse(text)
            self._cache[text] = None if ex is None else (
                [key_tokens(f) for f in ex.meta["facts"]], ex.meta["facts"])
        return self._cache[text]

    def labels(self, prompt, response: str) -> dict:
        parsed = self._parsed(prompt)
        length = word_count(response)
        if parsed is None:
            return {"coverage": 0.0, "facts_total": 0, "facts_covered": 0, "errors": 0, "repeats": 0,
                    "filler": 0, "length": length, "ideal_length": None}
        fact_keys, facts = parsed
        doc_keys = set().union(*fact_keys)
        got = key_tokens(response)
        fracs = [len(k & got) / len(k) for k in fact_keys]
        errors = len(got - doc_keys)
        filler = sum(1 for s in sentences(response) if not key_tokens(s))
        ideal = self._ideal_length(facts)
        return {"coverage": round(sum(fracs) / len(fracs), 4), "facts_total": len(fracs),
                "facts_covered": sum(1 for f in fracs if f == 1.0), "errors": errors,
                "repeats": repeated_sentences(response), "filler": filler, "length": length,
                "ideal_length": ideal}

    @staticmethod
    def _ideal_length(facts: list[str]) -> int:
        """Word count of the ideal summary: the compact form of every fact."""
        return word_count(" ".join(ideal_summary(facts)))

    def score(self, prompt, response: str) -> float:
        if not response.strip():
            return 0.0
        lab = self.labels(prompt, response)
        if lab["facts_total"] == 0:
            return 0.0
        ideal = lab["ideal_length"] or 1
        s = (lab["coverage"] - 0.5 * lab["errors"] - 0.2 * lab["repeats"] - 0.1 * min(lab["filler"], 3)
             - 0.005 * max(0, lab["length"] - 2 * ideal))
        return max(0.0, min(1.0, s))


_PATTERNS: list[tuple[re.Pattern, str]] = []


def _patterns() -> list[tuple[re.Pattern, str]]:
    if not _PATTERNS:
        for templates in FACTS.values():
            for doc_t, summ_t in templates:
                pat = re.sub(r"\\\{([A-Za-z0-9]+)\\\}", r"(?P<\1>[A-Za-z ]+?)", re.escape(doc_t))
                _PATTERNS.append((re.compile(f"^{pat}$"), summ_t))
    return _PATTERNS


def ideal_summary(facts: list[str]) -> list[str]:
    """The compact summary sentence of each article fact (the fact itself if no template fits)."""
    out = []
    for f in facts:
        for pat, summ_t in _patterns():
            m = pat.match(f)
            if m:
                slots = m.groupdict()
                slots.update({k.capitalize(): v[:1].upper() + v[1:] for k, v in list(slots.items())})
                out.append(summ_t.format(**slots))
                break
        else:
            out.append(f)
    return out


TASK = SummarizeTask()
