"""Chat templates rendered in a sandbox, with the same environment `transformers` gives them.

Templates come from model repositories, so they are untrusted code. Jinja's immutable sandbox
refuses attribute access that could reach Python internals; we turn that refusal into a
`TemplateError` that says what happened. The globals and filters mirror transformers'
`apply_chat_template` so that a template renders the same text here as it does there.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sftlab.core.errors import TemplateError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The built-in fallback for models without a template; used only when asked for by name."""


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` blocks (TRL's training templates) as plain
    output: sftlab derives and verifies the supervised spans itself, whatever the template marks."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(
            lineno
        )

    def _passthrough(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat template does not parse (line {exc.lineno}): {exc.message}"
        ) from None


def render(template: jinja2.Template, **context) -> str:
    """Render, turning sandbox refusals into a clear TemplateError."""
    try:
        return template.render(**context)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(
            f"the chat template tried something the sandbox forbids ({exc}); refusing to use it"
        ) from None
