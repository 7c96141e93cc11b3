"""Choose the chat template and find its end-of-turn token, once per run.

The template is the model's own unless the user names another; a model without one is an error
that says how to pick the built-in ChatML explicitly (never a silent fallback).
"""

from __future__ import annotations

import json
from pathlib import Path

from sftlab.config import TemplateConfig
from sftlab.core.errors import RowError, TemplateError
from sftlab.core.types import Message, ToolCall
from sftlab.template import jinja
from sftlab.template.messages import to_template_dict
from sftlab.template.render import ChatFormat, placeholder

_PROBE_TOOL = "sftlab_probe_tool"


def template_source(tokenizer, choice: str) -> str:
    if choice == "auto":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one trains chat
            source = source.get("default")
        if not source:
            raise TemplateError(
                "this model has no chat template. Set template.chat_template: chatml to use "
                "the built-in ChatML template, or give the path of a .jinja file"
            )
        return source
    if choice == "chatml":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
        if missing:
            raise TemplateError(
                f"template.chat_template: chatml needs the tokens {missing} in the vocabulary, "
                "and this tokenizer lacks them; use the model's own template or a .jinja file "
                "written with its own turn markers"
            )
        return jinja.CHATML
    path = Path(choice).expanduser()
    if not path.is_file():
        raise TemplateError(f"template.chat_template: {choice!r} is not auto, chatml or a file")
    return path.read_text(encoding="utf-8")


def _probe(tokenizer, source: str, messages: list[Message], tools=None) -> str:
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    compiled = jinja.compile_template(source)
    dicts = [to_template_dict(m, placeholder(i)) for i, m in enumerate(messages)]
    try:
        return jinja.render(
            compiled, messages=dicts, tools=tools, add_generation_prompt=False, **special
        )
    except Exception as exc:  # noqa: BLE001 - any template failure here means it cannot train
        if isinstance(exc, TemplateError):
            raise
        raise TemplateError(
            f"the chat template fails on a plain user/assistant exchange: {exc}"
        ) from None


def find_end_of_turn(tokenizer, source: str, override: str | None) -> tuple[str, int]:
    """The single token the template writes right after an assistant message's content."""
    text = _probe(tokenizer, source, [Message("user", "x"), Message("assistant", "y")])
    # Llama 2 writes a space before its end of turn (`' ' + eos_token`): the space is part of
    # the assistant's turn, the token after it ends the turn.
    after = text.split(placeholder(1), 1)[-1].lstrip(" ")
    if override:
        if not after.startswith(override):
            raise TemplateError(
                f"template.end_of_turn is {override!r}, but the template writes {after[:30]!r} "
                "right after an assistant message"
            )
        candidates = [override]
    else:
        added = sorted(
            (t for t in tokenizer.get_added_vocab() if t.strip() and after.startswith(t)),
            key=len,
            reverse=True,
        )
        candidates = added[:1] or ([tokenizer.eos_token] if tokenizer.eos_token else [])
        if not candidates or not after.startswith(candidates[0]):
            raise TemplateError(
                f"the chat template writes no special token right after an assistant message "
                f"(it writes {after[:30]!r}); set template.end_of_turn to the token that ends a turn"
            )
    token = candidates[0]
    ids = tokenizer.convert_tokens_to_ids([token])
    if len(ids) != 1 or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise TemplateError(f"end-of-turn {token!r} is not a single token of this tokenizer")
    return token, int(ids[0])


def renders_tool_calls(tokenizer, source: str) -> bool:
    call = ToolCall(_PROBE_TOOL, {"q": 1})
    messages = [Message("user", "x"), Message("assistant", "", tool_calls=(call,))]
    try:
        return _PROBE_TOOL in _probe(tokenizer, source, messages)
    except (TemplateError, RowError):
        return False


def with_default_system(source: str, prompt: str | None) -> str:
    """Bake a default system prompt into the template itself, so that training, `sftlab chat`
    and plain `transformers` loading the exported model all render the same prompt."""
    if prompt is None:
        return source
    literal = json.dumps(prompt, ensure_ascii=False)  # a JSON string is a valid Jinja literal
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}\n" + source
    )


def build_chat_format(tokenizer, config: TemplateConfig) -> ChatFormat:
    source = with_default_system(
        template_source(tokenizer, config.chat_template), config.system_prompt
    )
    token, token_id = find_end_of_turn(tokenizer, source, config.end_of_turn)
    return ChatFormat(
        template=source,
        end_of_turn=token,
        end_of_turn_id=token_id,
        native_tools=renders_tool_calls(tokenizer, source),
        mask=config.mask,
    )
