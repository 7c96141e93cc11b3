"""Task metrics: does a generated answer match its reference?

Each metric is `(prediction, reference, **opts) -> bool | float`. A dataset picks one for all its
rows (`--metric`) or a row names its own (a `"metric"` field: a name, or an object with a
`"name"` and the metric's options, e.g. {"name": "regex", "pattern": "^Paris"}).

    exact          same text after normalising case, spaces and a final period
    contains       the reference appears inside the prediction (case-insensitive)
    regex          a regular expression (`pattern`, else the reference) is found in the prediction
    numeric        the number after '####' (GSM8K) or else the last number, equal within 1e-6
    json           the prediction parses as JSON (one ``` fence around it is allowed)
    json_schema    the prediction's JSON validates against `schema` (else the reference as schema)
    rouge_l        ROUGE-L F-measure (the maintained `rouge-score` package, not a hand-written LCS)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sftlab.core.errors import SftlabError

_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)


def _normal(text: str) -> str:
    return _SPACES.sub(" ", text).strip().rstrip(".").strip().lower()


def exact_match(prediction: str, reference: str) -> bool:
    return _normal(prediction) == _normal(reference)


def contains(prediction: str, reference: str) -> bool:
    return _normal(reference) in _normal(prediction)


def regex_match(prediction: str, reference: str, pattern: str | None = None) -> bool:
    try:
        return re.search(pattern or reference, prediction) is not None
    except re.error as exc:
        raise SftlabError(f"metric regex: bad pattern {pattern or reference!r}: {exc}") from None


def extract_number(text: str) -> float | None:
    """The number after the last '####' when there is one, else the last number in the text;
    thousands separators and a leading '$' are ignored: "#### $1,234" -> 1234.0."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = _NUMBER.search(text)
    else:
        matches = _NUMBER.findall(text)
        found = matches[-1] if matches else None
    if found is None:
        return None
    token = found if isinstance(found, str) else found.group(0)
    return float(token.replace(",", ""))


def numeric_match(prediction: str, reference: str, tolerance: float = 1e-6) -> bool:
    got, want = extract_number(prediction), extract_number(reference)
    return got is not None and want is not None and abs(got - want) <= tolerance


def _parse_json(text: str) -> tuple[bool, Any]:
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        return True, json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return False, None


def json_valid(prediction: str, reference: str = "") -> bool:
    return _parse_json(prediction)[0]


def json_schema_match(prediction: str, reference: str = "", schema: Any = None) -> bool:
    import jsonschema

    if schema is None:
        ok, schema = _parse_json(reference)
        if not ok:
            raise SftlabError(
                "metric json_schema: no `schema` option and the reference is not JSON"
            )
    elif isinstance(schema, str):
        schema = json.loads(schema)
    ok, value = _parse_json(prediction)
    return ok and jsonschema.Draft202012Validator(schema).is_valid(value)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


METRICS: dict[str, Callable[..., bool | float]] = {
    "exact": exact_match,
    "contains": contains,
    "regex": regex_match,
    "numeric": numeric_match,
    "json": json_valid,
    "json_schema": json_schema_match,
    "rouge_l": rouge_l,
}


# the functions' own names work too (train.probes.metric uses them)
ALIASES = {fn.__name__: name for name, fn in METRICS.items() if fn.__name__ != name}


def parse_metric(spec: Any, where: str = "metric") -> tuple[str, dict[str, Any]]:
    """A metric spec (a name, or {"name": ..., **options}) -> (name, options); clear errors."""
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, opts = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise SftlabError(
            f"{where}: expected a metric name or an object with a 'name', got {spec!r}"
        )
    name = ALIASES.get(name, name)
    if name not in METRICS:
        raise SftlabError(f"{where}: unknown metric {name!r}; expected one of {sorted(METRICS)}")
    return name, opts


def score(name: str, prediction: str, reference: str, **opts: Any) -> float:
    """The metric as a number in [0, 1] (True -> 1.0), for averaging into an accuracy."""
    try:
        return float(METRICS[name](prediction, reference, **opts))
    except TypeError as exc:  # an option the metric does not take
        raise SftlabError(f"metric {name}: {exc}") from None
