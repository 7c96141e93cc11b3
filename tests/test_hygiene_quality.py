"""Quality bar of the heuristic rules: a labelled set built from the project's own clean
conversations (tests/fixtures/data/general_answers_greedy.jsonl: the embedded model's greedy
answers to the demo's general prompts, which the demo shipped until it switched to sampled ones;
examples/identity.jsonl) with defects injected per family, each row labelled. Per family:
precision >= 0.95, recall >= 0.90; clean rows wrongly rejected <= 3%.

Labels come from how each row was built, never from the audit's output. Seven demo answers are
defective as shipped (the 135M model that wrote them looped, or answered with the input); a
person read them and labelled them below (KNOWN_DEFECTS), so they count as defects, not as clean.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sftlab.config import HygieneConfig
from sftlab.hygiene.run import build_options, run_audit
from sftlab.hygiene.settings import RULES

REPO = Path(__file__).resolve().parent.parent
PER_FAMILY = 10
KNOWN_DEFECTS = {  # prompt -> family, read and judged by a person
    "Write a short description of a cozy cafe.": "repetition",  # "warm and inviting atmosphere" x3
    "How many weeks are in a year?": "repetition",  # the same two sentences, twice
    "Give three examples of verbs.": "repetition",  # "can be translated to other languages as" x3
    "What does `range(5)` produce in Python?": "repetition",  # the same explanation, repeated
    "What is the main ingredient in guacamole?": "repetition",  # "salsa de verde" loop
    "Give a simple explanation of how a compass works.": "repetition",  # 3 near-equal paragraphs
    "Turn this into a question: The train leaves at six.": "structure",  # answer == the input
}
THRESHOLDS = {"response_too_long": 1000, "response_too_short": 3, "prompt_too_long": 600}
FAMILY = {name: {"encoding": "language"}.get(spec.family, spec.family) for name, spec in RULES.items()}

LOOP = "This is the key point to remember."
SLOP = ("Certainly! Let's delve into this. ", " I hope this helps! Feel free to ask if you need more.")
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide an answer to this question.",
    "I must decline to answer that. It would be inappropriate for me to speculate.",
]
FOREIGN = [
    "这是一个很好的问题。答案取决于许多因素，我们需要仔细考虑每一个方面，然后再做出决定。",
    "Это очень хороший вопрос. Ответ зависит от многих факторов, и нужно внимательно всё обдумать.",
    "La réponse est simple : il faut que le soleil et la pluie soient dans le ciel pour que nous "
    "puissions voir les couleurs, et ce phénomène est très beau pour les enfants qui sont dehors.",
]


def clean_pool() -> list[tuple[str, str]]:
    """(prompt, answer) pairs, in file order."""
    demo = REPO / "tests" / "fixtures" / "data" / "general_answers_greedy.jsonl"
    pairs = [(r["prompt"], r["response"]) for r in map(json.loads, demo.read_text().splitlines())]
    identity = REPO / "examples" / "identity.jsonl"
    for row in map(json.loads, identity.read_text().splitlines()):
        pairs.append((row["messages"][0]["content"], row["messages"][1]["content"]))
    return pairs


def row(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def truncate(answer: str) -> str:
    """Cut after the first sentence plus about 14 more words, after a lower-case word: where a
    generation that hit its token limit stops."""
    first_end = answer.index(". ") + 2
    rest = answer[first_end:].split()[:14]
    while rest and not (rest[-1].isalpha() and rest[-1].islower()):
        rest.pop()
    return answer[:first_end] + " ".join(rest)


def mojibake(answer: str) -> str:
    return ("It’s true: " + answer).encode("utf-8").decode("cp1252", errors="replace")


STRUCTURE = [
    lambda p, a: row(p, p),  # echo
    lambda p, a: row(p, truncate(a)),
    lambda p, a: row(p, "Dear [INSERT NAME],\n\n" + a),
    lambda p, a: row(p + "\n\n<noinput>", a),
    lambda p, a: row(p, a + "\n\n```python\nprint('more')"),
]
LENGTH = [
    lambda p, a, filler: row(p, filler + " " + a),  # far longer than 1000 tokens
    lambda p, a, filler: row(p, "Yes."),
    lambda p, a, filler: row("Context:\n" + filler + "\n\n" + p, a),
]


def filler_text(vocab: list[str], seed: int, sentences: int = 90) -> str:
    """~1,100 words of sentences of random words: long, and like no other row (each row its own)."""
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(vocab) for _ in range(12)).capitalize() + "." for _ in range(sentences))
REPETITION = [
    lambda p, a: row(p, a + " " + " ".join([LOOP] * 8)),
    lambda p, a: row(p, "\n\n".join([a] * 4)),
    lambda p, a: row(p, a + " and so on" * 20),
]
HALLUCINATION = [
    lambda p, a: row(p + " Use the attached file.", a),
    lambda p, a: row("Describe the image above.", a),
    lambda p, a: row(p, "As the image you provided shows, " + a),
    lambda p, a: row("Summarize the following article.", a),
    lambda p, a: row("Classify this sentence as positive or negative.", a),
]
LANGUAGE = [
    lambda p, a, k: row(p, FOREIGN[k % len(FOREIGN)]),
    lambda p, a, k: row(p, mojibake(a)),
    lambda p, a, k: row(p, a.replace(" ", "\x07", 1)),
]


def split_pool() -> tuple[list, list, dict]:
    """(clean rows left as they are, known defects, bases per family: each base used once, so
    no injected row is a near copy of another row in the set)."""
    pool = clean_pool()
    known = [(p, a) for p, a in pool if p in KNOWN_DEFECTS]
    clean = [(p, a) for p, a in pool if p not in KNOWN_DEFECTS]
    rng = random.Random(0)
    rng.shuffle(clean)
    long = [pa for pa in clean if len(pa[1].split()) >= 40 and ". " in pa[1]]
    take_long = iter(long)
    bases = {f: [next(take_long) for _ in range(PER_FAMILY)] for f in ("structure", "repetition", "slop")}
    rest = [pa for pa in clean if pa not in long] + list(take_long)
    rng.shuffle(rest)
    take = iter(rest)
    for family in ("length", "refusal", "hallucination", "language", "contamination"):
        bases[family] = [next(take) for _ in range(PER_FAMILY)]
    return list(take), known, bases


def injected_rows(bases: dict, vocab: list[str]) -> list[tuple[dict, str]]:
    """(row, family) for every base, with its family's defect."""
    made = {
        "structure": [STRUCTURE[k % len(STRUCTURE)](p, a) for k, (p, a) in enumerate(bases["structure"])],
        "length": [LENGTH[k % len(LENGTH)](p, a, filler_text(vocab, k)) for k, (p, a) in enumerate(bases["length"])],
        "repetition": [REPETITION[k % len(REPETITION)](p, a) for k, (p, a) in enumerate(bases["repetition"])],
        "slop": [row(p, SLOP[0] + a + SLOP[1]) for p, a in bases["slop"]],
        "refusal": [row(p, REFUSALS[k % len(REFUSALS)]) for k, (p, _) in enumerate(bases["refusal"])],
        "hallucination": [HALLUCINATION[k % len(HALLUCINATION)](p, a) for k, (p, a) in enumerate(bases["hallucination"])],
        "language": [LANGUAGE[k % len(LANGUAGE)](p, a, k) for k, (p, a) in enumerate(bases["language"])],
        "contamination": [row(p, a) for p, a in bases["contamination"]],  # their prompts are eval rows
    }  # fmt: skip
    return [(r, family) for family, rows in made.items() for r in rows]


def duplicate_rows(untouched: list) -> list[tuple[dict, str]]:
    """Copies of clean rows already in the set (the originals stay clean and must be kept).
    One changed word in a short answer is a different answer: near copies come from long ones."""
    exact = untouched[: PER_FAMILY // 2]
    near = [pa for pa in untouched if len(pa[1].split()) >= 30 and pa not in exact][: PER_FAMILY // 2]
    out = [(row(p, a), "duplicates") for p, a in exact]
    for p, a in near:
        words = a.split()
        words[len(words) // 2] = "indeed"  # one word changed: a near duplicate
        out.append((row(p, " ".join(words)), "duplicates"))
    return out


def build_labelled_set(tmp: Path) -> tuple[Path, Path, list[str]]:
    """Train file, eval file, and the label of every train row in file order."""
    untouched, known, bases = split_pool()
    vocab = sorted({w for p, a in clean_pool() for w in a.lower().split() if w.isalpha()})
    labelled = [(row(p, a), KNOWN_DEFECTS.get(p, "clean")) for p, a in untouched + known]
    labelled += injected_rows(bases, vocab) + duplicate_rows(untouched)
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r, _ in labelled), encoding="utf-8")
    evals = tmp / "eval.jsonl"
    eval_rows = [row(p, a) for p, a in bases["contamination"]] + [row("What is 17 times 23?", "391.")]
    evals.write_text("".join(json.dumps(r) + "\n" for r in eval_rows), encoding="utf-8")
    return train, evals, [label for _, label in labelled]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labelled")
    train, evals, labels = build_labelled_set(tmp)
    options = build_options(HygieneConfig(thresholds=THRESHOLDS, eval_files=[str(evals)]))
    result, _ = run_audit([train], options, tmp / "audit", say=lambda _: None)
    predicted = [
        {FAMILY[f.rule] for f in v.findings if result.settings.actions[f.rule] == "reject"}
        for v in result.verdicts
    ]
    return labels, predicted, result


def test_the_labelled_set_has_every_family_and_enough_clean_rows(audited):
    labels, _, _ = audited
    counts = Counter(labels)
    assert counts["clean"] >= 60
    for family in ("structure", "length", "repetition", "slop", "refusal", "hallucination",
                   "language", "duplicates", "contamination"):  # fmt: skip
        assert counts[family] >= PER_FAMILY


@pytest.mark.parametrize("family", ["structure", "length", "repetition", "slop", "refusal",
                                    "hallucination", "language", "duplicates", "contamination"])  # fmt: skip
def test_precision_and_recall_per_family(audited, family):
    labels, predicted, result = audited
    flagged = [i for i, p in enumerate(predicted) if family in p]
    positives = [i for i, label in enumerate(labels) if label == family]
    hits = [i for i in positives if family in predicted[i]]
    wrong = [(result.rows[i].id, labels[i]) for i in flagged if labels[i] != family]
    missed = [result.rows[i].id for i in positives if family not in predicted[i]]
    assert len(hits) / len(positives) >= 0.90, f"recall: missed {missed}"
    assert len(flagged) - len(wrong) >= 0.95 * len(flagged), f"precision: wrongly flagged {wrong}"


def test_clean_rows_are_rarely_rejected(audited):
    labels, _, result = audited
    clean = [i for i, label in enumerate(labels) if label == "clean"]
    rejected = [result.rows[i].id for i in clean if result.verdicts[i].rejected]
    assert len(rejected) <= 0.03 * len(clean), f"clean rows rejected: {rejected}"


def test_worker_processes_judge_exactly_as_one_process(audited, tmp_path):
    labels, _, serial = audited
    train = next(iter({r.conversation.source.file for r in serial.rows}))
    evals = str(Path(train).with_name("eval.jsonl"))
    options = build_options(HygieneConfig(thresholds=THRESHOLDS, eval_files=[evals]))
    options.workers = 2
    parallel, _ = run_audit([Path(train)], options, tmp_path / "audit", say=lambda _: None)
    assert [[f.to_json() for f in v.findings] for v in parallel.verdicts] == [
        [f.to_json() for f in v.findings] for v in serial.verdicts
    ]
    assert [t.slop_hits for t in parallel.texts] == [t.slop_hits for t in serial.texts]
