"""Choose the chat template and find its end-of-turn token, once per run.

The template is the model's own unless the user names another; a model without one is an error
that says how to pick the built-in ChatML explicitly (never a silent fallback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.config import TemplateConfig
from sftlab.core.errors import RowError, TemplateError
from sftlab.core.types import Message, ToolCall
from sftlab.template import jinja, library
from sftlab.template.messages import to_template_dict
from sftlab.template.render import ChatFormat, placeholder

_PROBE_TOOL = "sftlab_probe_tool"


def template_source(tokenizer, choice: str) -> str:
    return choose_template(tokenizer, choice)[0]


def choose_template(tokenizer, choice: str) -> tuple[str, str]:
    """(Jinja source, what it is: "model", a library name, or the file's path)."""
    if choice == "auto":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one trains chat
            source = source.get("default")
        if source:
            return source, "model"
        family = auto_family(tokenizer)
        return library.source(family), family
    if choice in library.NAMES:
        return library.source(choice), choice
    path = Path(choice).expanduser()
    if not path.is_file():
        raise TemplateError(
            f"template.chat_template: {choice!r} is not auto, one of {', '.join(library.NAMES)} "
            "or a .jinja file"
        )
    return path.read_text(encoding="utf-8"), str(path)


def auto_family(tokenizer) -> str:
    """The library format of a model without a template: its family's, when the family's turn
    markers are single tokens of its vocabulary; anything else is the user's choice."""
    found = library.families_in_vocabulary(tokenizer)
    options = (
        f"set template.chat_template to one of {', '.join(library.NAMES)} (sftlab's library; "
        "markers missing from the vocabulary are added as new tokens and trained) or to a .jinja file"
    )
    if len(found) != 1:
        why = "no" if not found else f"several ({', '.join(found)})"
        raise TemplateError(
            f"this model has no chat template, and {why} known turn formats have their markers "
            f"in its vocabulary, so sftlab cannot tell which to use: {options}"
        )
    return found[0]


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


def build_chat_format(tokenizer, config: TemplateConfig, say=None) -> ChatFormat:
    """The run's ChatFormat. A library format may add its markers to the tokenizer (in place):
    the model then needs rows for `added_token_ids` (model/vocab.py)."""
    from sftlab.model.vocab import add_marker_tokens  # imports torch: only when needed

    source, name = choose_template(tokenizer, config.chat_template)
    added: list[int] = []
    if name != "model":
        added = add_marker_tokens(tokenizer, library.MARKERS.get(name, ()))
        source = with_bos(tokenizer, source)
    if config.chat_template == "auto" and name != "model":
        (say or _stderr)(
            f"template: the model has no chat template; using sftlab's {name!r} turn format "
            f"(its markers {', '.join(library.MARKERS[name])} are tokens of the vocabulary)"
        )
    elif added:
        (say or _stderr)(
            f"template: added {len(added)} marker token(s) to the vocabulary for {name!r} "
            f"(ids {added}); their embedding rows start at the mean row and are trained"
        )
    source = with_default_system(source, config.system_prompt)
    token, token_id = find_end_of_turn(tokenizer, source, config.end_of_turn)
    return ChatFormat(
        template=source,
        end_of_turn=token,
        end_of_turn_id=token_id,
        native_tools=renders_tool_calls(tokenizer, source),
        mask=config.mask,
        name=name,
        added_token_ids=tuple(added),
    )


def with_bos(tokenizer, source: str) -> str:
    """Exactly one BOS, whichever of tokenizer and template adds it. A tokenizer that puts BOS
    before every text (Gemma's) needs it at the start of a conversation; a template that does not
    write it gets it written first, so that the text tokenized without special tokens (as
    apply_chat_template and vLLM do), training and the exported template agree."""
    bos = tokenizer.bos_token
    if not bos or tokenizer("a", add_special_tokens=True)["input_ids"][:1] != [
        tokenizer.bos_token_id
    ]:
        return source
    if _probe(tokenizer, source, [Message("user", "x")]).startswith(bos):
        return source
    return "{{ bos_token }}" + source


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
