"""The per-row rules, by name, and the settings a run gives them.

    rule(row: RowText, threshold: float, ctx: RuleContext) -> Finding | None

Dataset-level rules (length_ratio, exact/near duplicates, contamination, model scores) need every
row at once; the audit runs them after these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sftlab.core.errors import ConfigError
from sftlab.hygiene import grounding, language, length, refusal, repetition, slop, structure
from sftlab.hygiene.settings import RULES
from sftlab.hygiene.text import Finding, RowText, RuleContext

Rule = Callable[[RowText, float, RuleContext], Finding | None]

ROW_RULES: dict[str, Rule] = {
    "empty_response": structure.empty_response,
    "echo": structure.echo,
    "truncated": structure.truncated,
    "placeholder": structure.placeholder,
    "response_too_short": length.response_too_short,
    "response_too_long": length.response_too_long,
    "prompt_too_long": length.prompt_too_long,
    "repeated_lines": repetition.repeated_lines,
    "top_ngram": repetition.top_ngram,
    "duplicate_ngrams": repetition.duplicate_ngrams,
    "looping": repetition.looping,
    "slop": slop.slop,
    "refusal": refusal.refusal,
    "unseen_reference": grounding.unseen_reference,
    "missing_input": grounding.missing_input,
    "language_mismatch": language.language_mismatch,
    "mojibake": language.mojibake,
    "control_chars": language.control_chars,
}


@dataclass(frozen=True)
class RuleSettings:
    """Action and threshold of every rule, defaults overridden by the config."""

    actions: dict[str, str]
    thresholds: dict[str, float]

    @classmethod
    def from_config(cls, actions: dict[str, str], thresholds: dict[str, float]) -> RuleSettings:
        unknown = sorted((set(actions) | set(thresholds)) - set(RULES))
        if unknown:
            raise ConfigError([f"unknown hygiene rule(s) {unknown}; known: {', '.join(RULES)}"])
        return cls(
            {name: actions.get(name, spec.action) for name, spec in RULES.items()},
            {name: float(thresholds.get(name, spec.threshold)) for name, spec in RULES.items()},
        )

    def on(self, name: str) -> bool:
        return self.actions[name] != "off"


def run_row_rules(row: RowText, settings: RuleSettings, ctx: RuleContext) -> list[Finding]:
    return [
        finding
        for name, rule in ROW_RULES.items()
        if settings.on(name) and (finding := rule(row, settings.thresholds[name], ctx)) is not None
    ]
