"""The instruct demo's instruction set: written by sftlab, generated from tables, deterministic.

    assets/instruct/tables.json  facts (capitals, element symbols, opposites, what things do),
                                 word lists, sentences, units     -- the only source of content
    this module                  one small generator per task kind: prompt phrasings x items

Each kind draws its items once (seeded) and splits them: the held-out prompts ask about items that
no training row asks about (a country whose capital was never asked, a verb never put in the past
tense, numbers never added together), so a right held-out answer is not recall of a trained row.
Most held-out rows carry a metric (the `"metric"` field `sftlab eval` reads) that checks the
answer: `contains`/`regex` for a fact inside a sentence, `numeric` for sums and conversions,
`exact` for sorted lists, labels, rewrites and extracted strings.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

SEED = 0


@dataclass(frozen=True)
class Example:
    kind: str
    item: str  # what the example is about; a held-out item never occurs in a training row
    prompt: str
    answer: str
    metric: dict | None = None  # {"name": ..., **options}; None: no checkable answer

    def train_row(self) -> dict:
        return {"prompt": self.prompt, "completion": self.answer, "kind": self.kind}

    def heldout_row(self) -> dict:
        row = self.train_row() | {"item": self.item}
        return row | ({"metric": self.metric} if self.metric else {})


def load_tables() -> dict:
    text = resources.files("sftlab").joinpath("assets/instruct/tables.json").read_text("utf-8")
    return json.loads(text)


def word(text: str) -> dict:
    """The answer has a word starting with this one, any case ("heat" accepts "heats")."""
    return {"name": "regex", "pattern": rf"(?i)\b{re.escape(text)}"}


def _split(items: list, heldout: int, train: int, rng: random.Random) -> tuple[list, list]:
    """Shuffled items -> (training items, held-out items); disjoint by construction."""
    items = list(items)
    rng.shuffle(items)
    return items[heldout : heldout + train], items[:heldout]


def a_or_an(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _phrase(rng: random.Random, phrasings: list[str], **values) -> str:
    return rng.choice(phrasings).format(**values)


# ---------------------------------------------------------------------------------------------
# One generator per kind: (tables, rng, heldout) -> (train examples, held-out examples)


def facts(t: dict, rng: random.Random, heldout: int):
    asks = {
        "capital": ["What is the capital of {x}?", "Name the capital city of {x}.", "Which city is the capital of {x}?"],
        "symbol": ["What is the chemical symbol for {x}?", "Give the element symbol of {x}.", "Which symbol stands for {x}?"],
        "opposite": ["What is the opposite of '{x}'?", "Give the opposite of the word '{x}'.", "Name a word that means the opposite of '{x}'."],
    }  # fmt: skip
    answers = {
        "capital": ("The capital of {x} is {y}.", lambda y: {"name": "contains", "reference": y}),
        "symbol": ("The chemical symbol for {x} is {y}.", lambda y: {"name": "regex", "pattern": rf"\b{y}\b"}),
        "opposite": ("The opposite of '{x}' is '{y}'.", word),
    }  # fmt: skip
    pools = {"capital": t["capitals"], "symbol": t["symbols"], "opposite": t["opposites"]}
    # The opposite of 'light' is 'dark' and of 'heavy' is 'light': one pair per word family.
    items = [(kind, x, y) for kind, table in pools.items() for x, y in table.items()]
    train, held = _split(items, heldout, 76, rng)
    held_words = {w for _, x, y in held for w in (x, y)}
    train = [i for i in train if not {i[1], i[2]} & held_words]

    def make(kind, x, y):
        template, metric = answers[kind]
        return Example(
            "facts",
            f"{kind}:{x}",
            _phrase(rng, asks[kind], x=x),
            template.format(x=x, y=y),
            metric(y),
        )

    return [make(*i) for i in train], [make(*i) for i in held]


def arithmetic(t: dict, rng: random.Random, heldout: int):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
    asks = [
        "What is {a} {op} {b}?",
        "Calculate {a} {op} {b}.",
        "Compute {a} {op} {b}.",
        "{a} {op} {b} = ?",
    ]
    seen: set = set()
    examples = []
    while len(examples) < 60 + heldout:
        op = rng.choice(list(ops))
        a, b = (
            (rng.randint(2, 12), rng.randint(2, 12))
            if op == "x"
            else (rng.randint(10, 99), rng.randint(2, 60))
        )
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        result = ops[op](a, b)
        shown = "*" if op == "x" and rng.random() < 0.5 else op
        examples.append(Example("arithmetic", f"{a}{op}{b}", _phrase(rng, asks, a=a, op=shown, b=b),
                                f"{a} {shown} {b} = {result}.", {"name": "numeric"}))  # fmt: skip
    return examples[heldout:], examples[:heldout]


def conversion(t: dict, rng: random.Random, heldout: int):
    asks = [
        "How many {small} are in {n} {big}?",
        "Convert {n} {big} to {small}.",
        "{n} {big} is how many {small}?",
    ]
    back = ["How many {big} is {m} {small}?", "Convert {m} {small} to {big}."]
    cases = [(big, small, f, n) for big, small, f in t["units"] for n in range(2, 10)]
    train, held = _split(cases, heldout, 55, rng)

    def make(big, small, factor, n):
        if rng.random() < 0.3:  # the other direction: the answer is the small number
            prompt = _phrase(rng, back, big=big, small=small, m=n * factor)
            return Example("conversion", f"{n}{big}", prompt, f"{n * factor} {small} is {n} {big}.", {"name": "numeric", "reference": str(n)})  # fmt: skip
        prompt = _phrase(rng, asks, big=big, small=small, n=n)
        return Example("conversion", f"{n}{big}", prompt, f"{n} {big} is {n * factor} {small}.", {"name": "numeric"})  # fmt: skip

    return [make(*c) for c in train], [make(*c) for c in held]


def rewriting(t: dict, rng: random.Random, heldout: int):
    """Past tense (held-out verbs are never put in the past tense in training) and capitals."""
    past = [
        "Rewrite this sentence in the past tense: {s}",
        "Put this sentence in the past tense: {s}",
        "Change to past tense: {s}",
    ]
    upper = [
        "Rewrite this sentence in capital letters: {s}",
        "Write this in all caps: {s}",
        "Convert to uppercase: {s}",
    ]
    train_verbs, held_verbs = _split(t["verbs"], heldout // 2, len(t["verbs"]), rng)
    people = t["people"]

    def tense(verbs, n):
        out = []
        for i in range(n):
            now, then, obj = verbs[i % len(verbs)]
            who = rng.choice(people)
            sentence = f"{who} {now} {obj}."
            out.append(Example("rewriting", f"past:{now}", _phrase(rng, past, s=sentence), f"{who} {then} {obj}.", {"name": "exact"}))  # fmt: skip
        return out

    sentences = [f"{p} {v[0]} {v[2]}." for p in people for v in t["verbs"]]
    up_train, up_held = _split(sentences, heldout - heldout // 2, 26, rng)

    def caps(s):
        return Example(
            "rewriting", f"upper:{s}", _phrase(rng, upper, s=s), s.upper(), {"name": "exact"}
        )

    train = tense(train_verbs, 30) + [caps(s) for s in up_train]
    return train, tense(held_verbs, len(held_verbs)) + [caps(s) for s in up_held]


def sorting(t: dict, rng: random.Random, heldout: int):
    nums = [
        "Sort these numbers from smallest to largest: {xs}",
        "Put these numbers in ascending order: {xs}",
        "Order from lowest to highest: {xs}",
    ]
    words = ["Sort these words alphabetically: {xs}", "Put these words in alphabetical order: {xs}"]
    seen: set = set()
    examples = []
    while len(examples) < 50 + heldout:
        if rng.random() < 0.5:
            xs = rng.sample(range(1, 100), rng.randint(3, 5))
            asks, ordered = nums, [str(x) for x in sorted(xs)]
        else:
            xs = rng.sample(t["words"], rng.randint(3, 5))
            asks, ordered = words, sorted(xs)
        key = tuple(sorted(map(str, xs)))
        if key in seen:
            continue
        seen.add(key)
        prompt = _phrase(rng, asks, xs=", ".join(map(str, xs)))
        examples.append(
            Example("sorting", ",".join(key), prompt, ", ".join(ordered), {"name": "exact"})
        )
    return examples[heldout:], examples[:heldout]


def classification(t: dict, rng: random.Random, heldout: int):
    """Parity, review sentiment, and which of two categories a thing belongs to; one-word labels."""
    cats = {c: items for c, items in t["categories"].items() if c != "color"}
    cases = [("parity", n) for n in rng.sample(range(11, 500), 24)]
    cases += [("sentiment", (s, label)) for label, ss in t["reviews"].items() for s in ss]
    cases += [("category", (x, c)) for c, items in cats.items() for x in items]
    train, held = _split(cases, heldout, 64, rng)

    def make(case, value):
        if case == "parity":
            label = "Even" if value % 2 == 0 else "Odd"
            asks = ["Is {n} even or odd?", "Is the number {n} odd or even?", "Even or odd: {n}"]
            return Example("classification", f"parity:{value}", _phrase(rng, asks, n=value), f"{label}.", {"name": "exact"})  # fmt: skip
        if case == "sentiment":
            text, label = value
            asks = [
                "Is this review positive or negative? {s}",
                "Classify the sentiment of this review as positive or negative: {s}",
            ]
            return Example("classification", f"review:{text}", _phrase(rng, asks, s=text), f"{label.capitalize()}.", {"name": "exact"})  # fmt: skip
        thing, cat = value
        other = rng.choice([c for c in cats if c != cat])
        a, b = (cat, other) if rng.random() < 0.5 else (other, cat)
        asks = ["Is {x} {a} or {b}?", "Which is {x}: {a} or {b}? Answer with one word."]
        prompt = _phrase(rng, asks, x=a_or_an(thing), a=a_or_an(a), b=a_or_an(b))
        return Example("classification", f"thing:{thing}", prompt, f"{cat.capitalize()}.", {"name": "exact"})  # fmt: skip

    return [make(*c) for c in train], [make(*c) for c in held]


def extraction(t: dict, rng: random.Random, heldout: int):
    """Pull one string out of a sentence: an email address, a year, or a person's name."""
    people, cases = t["people"], []
    for person in people:
        email = f"{person.lower()}.{rng.choice(['reyes', 'novak', 'okafor', 'lind', 'tanaka'])}@{rng.choice(t['domains'])}"
        cases.append(
            ("email", email, f"For questions about the order, write to {email} before Monday.")
        )
    for event in t["events"]:
        for year in rng.sample(range(1850, 2020), 3):
            cases.append(
                ("year", str(year), f"Records show that {event} in {year}, after a long delay.")
            )
    for person in people:
        place = rng.choice(["the bakery", "the station", "the harbor", "the library"])
        cases.append(("name", person, f"Yesterday {person} met the new neighbors near {place}."))
    asks = {
        "email": ["Extract the email address from this text: {s}", "What email address appears here? {s}"],
        "year": ["Which year is mentioned in this sentence? {s}", "Extract the year from this text: {s}"],
        "name": ["Who is the person mentioned in this sentence? {s}", "Extract the person's name: {s}"],
    }  # fmt: skip
    train, held = _split(cases, heldout, 56, rng)

    def make(what, value, sentence):
        return Example("extraction", f"{what}:{value}", _phrase(rng, asks[what], s=sentence), value, {"name": "exact"})  # fmt: skip

    return [make(*c) for c in train], [make(*c) for c in held]


def explanation(t: dict, rng: random.Random, heldout: int):
    asks = [
        "In one sentence, what does {x} do?",
        "Explain briefly what {x} is for.",
        "What is {x} used for? Answer in one sentence.",
    ]
    train, held = _split(t["purposes"], heldout, len(t["purposes"]), rng)

    def make(thing, purpose, key):
        answer = f"{a_or_an(thing).capitalize()} {purpose}."
        return Example("explanation", f"thing:{thing}", _phrase(rng, asks, x=a_or_an(thing)), answer, word(key))  # fmt: skip

    return [make(*p) for p in train], [make(*p) for p in held]


def lists(t: dict, rng: random.Random, heldout: int):
    """Number sequences (checkable) and a few members of a category (any members will do)."""
    cases = [("multiples", k, n) for k in range(2, 13) for n in (4, 5, 6)]
    cases += [("count", a, a + n) for a in range(3, 40, 3) for n in (4, 6)]
    cases += [("members", c, n) for c in t["categories"] for n in (3, 4, 5)]
    train, held = _split(cases, heldout, 54, rng)
    numbers = {3: "three", 4: "four", 5: "five", 6: "six"}

    def make(what, a, b):
        if what == "multiples":
            asks = [
                "List the first {n} multiples of {k}.",
                "Write the first {n} multiples of {k}, separated by commas.",
            ]
            answer = ", ".join(str(a * i) for i in range(1, b + 1))
            return Example("lists", f"multiples:{a}:{b}", _phrase(rng, asks, n=numbers[b], k=a), answer, {"name": "exact"})  # fmt: skip
        if what == "count":
            asks = ["Count from {a} to {b}.", "List the whole numbers from {a} to {b}."]
            answer = ", ".join(str(i) for i in range(a, b + 1))
            return Example("lists", f"count:{a}:{b}", _phrase(rng, asks, a=a, b=b), answer, {"name": "exact"})  # fmt: skip
        members = rng.sample(t["categories"][a], b)
        asks = ["Name {n} kinds of {c}.", "List {n} examples of {c}."]
        answer = ", ".join(m.capitalize() if i == 0 else m for i, m in enumerate(members)) + "."
        plural = {"fruit": "fruit", "tool": "tools", "color": "colors"}.get(a, a + "s")
        return Example(
            "lists", f"members:{a}:{b}", _phrase(rng, asks, n=numbers[b], c=plural), answer
        )

    return [make(*c) for c in train], [make(*c) for c in held]


KINDS: dict[str, tuple[Callable, int]] = {
    # kind: (generator, held-out prompts)
    "facts": (facts, 6),
    "arithmetic": (arithmetic, 5),
    "conversion": (conversion, 4),
    "rewriting": (rewriting, 4),
    "sorting": (sorting, 4),
    "classification": (classification, 5),
    "extraction": (extraction, 4),
    "explanation": (explanation, 5),
    "lists": (lists, 4),
}


def instruction_set(seed: int = SEED) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) over every kind; the same for the same seed."""
    tables = load_tables()
    train, held = [], []
    for i, (kind, (generator, heldout)) in enumerate(KINDS.items()):
        rng = random.Random(f"{seed}:{i}:{kind}")  # a kind's rows do not shift when another changes
        kind_train, kind_held = generator(tables, rng, heldout)
        train += kind_train
        held += kind_held
    random.Random(seed).shuffle(train)
    return train, held


def write_instruction_set(folder, seed: int = SEED):
    """train.jsonl (prompt/completion) and heldout.jsonl (with item and metric) in `folder`."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, held = instruction_set(seed)
    paths = folder / "train.jsonl", folder / "heldout.jsonl"
    for path, rows in zip(
        paths, ([e.train_row() for e in train], [e.heldout_row() for e in held]), strict=True
    ):
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    return paths
