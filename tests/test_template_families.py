"""Train on exactly what inference engines feed the model, on every tokenizer family (issue 11.1).

For each family in tests/families.py (SentencePiece with a dummy prefix at every segment / at the
start only / with whitespace-eating markers, byte-level BPE with two split rules, Gemma-style) and
its own chat template, and for message contents that start with a space, a newline, punctuation,
digits or CJK text:

- the trained input_ids equal `tokenizer(apply_chat_template(messages, tokenize=False))`, the
  whole rendered text tokenized in one call, as vLLM, llama.cpp and transformers do;
- decoding the supervised tokens gives each assistant content plus what the template writes up to
  its end-of-turn token (DESIGN invariant 2). Where the tokenizer merges the template's last
  characters with the content's first ones into one token (a byte-level "\\n\\n", or a Phi-3
  marker swallowing the whitespace after it), that token belongs to the prompt and the content
  characters inside it are not supervised; the expected text drops exactly those characters,
  located from the tokenizer's own offsets.
- the pre-flight mask report finds no problem.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from families import FAMILIES, expected_supervised, family_tokenizer
from sftlab.config import TemplateConfig
from sftlab.core.errors import MaskError
from sftlab.core.types import Conversation, Message, RowRef
from sftlab.template.checks import mask_report, preflight, supervised_spans
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer

CONTENTS = {
    "plain": "Plain answer.",
    "space": " leading space answer",
    "spaces": "  two leading spaces",
    "newline": "\nleading newline answer",
    "indent": "\n    indented code",
    "punctuation": "!Exclamation first? Yes.",
    "digits": "42 is the answer, 7 too",
    "cjk": "日本語の答えはこれです。",
}


def conversation(family, content: str) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}] * family.system
    return messages + [
        {"role": "user", "content": content + " question"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "Two newlines?\n\nYes"},
        {"role": "assistant", "content": content + " again"},
    ]


def to_conversation(messages: list[dict]) -> Conversation:
    return Conversation(tuple(Message(m["role"], m["content"]) for m in messages))


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("name", FAMILIES)
def test_ids_equal_whole_text_tokenization(name, content):
    family, tokenizer = FAMILIES[name], family_tokenizer(name)
    messages = conversation(family, CONTENTS[content])
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert whole == tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]

    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    example = renderer.encode(to_conversation(messages))
    assert example.input_ids.tolist() == whole

    decoded = [
        tokenizer.decode(example.input_ids[a:b].tolist())
        for a, b in supervised_spans(example.labels)
    ]
    expected = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:k], tokenize=False, add_generation_prompt=True
        )
        text = message["content"].strip() if family.strips else message["content"]
        assistant_text = family.opens + text + family.eot
        expected.append(expected_supervised(tokenizer, rendered, prompt, assistant_text))
    # SentencePiece decoders drop the dummy-prefix space of the first token they decode.
    assert [d.lstrip(" ") for d in decoded] == [e.lstrip(" ") for e in expected]


@pytest.mark.parametrize("name", FAMILIES)
def test_mask_report_passes_on_every_family(name):
    family, tokenizer = FAMILIES[name], family_tokenizer(name)
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    conversations = [to_conversation(conversation(family, c)) for c in CONTENTS.values()]
    examples = [renderer.encode(c) for c in conversations]
    report = mask_report(renderer, conversations, examples, [], 0)
    assert report["problems"] == [] and report["whole_text_tokenization_mismatches"] == 0


def test_preflight_fails_naming_rows_whose_ids_differ_from_whole_text():
    """Rows tokenized piece by piece (what sftlab did before) differ from the whole-text encoding
    on a dummy-prefix tokenizer: the report names them by file:line and the pre-flight stops."""
    tokenizer = family_tokenizer("mistral")
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    conversations = [
        replace(
            to_conversation(conversation(FAMILIES["mistral"], c)),
            source=RowRef("d.jsonl", n, n - 1),
        )
        for n, c in enumerate(CONTENTS.values(), start=1)
    ]
    examples = [renderer.encode(c) for c in conversations]
    good = mask_report(renderer, conversations, examples, [], 0)
    assert good["problems"] == []

    rendered = tokenizer.apply_chat_template(
        conversation(FAMILIES["mistral"], "Plain"), tokenize=False
    )
    cut = rendered.index("Plain", rendered.index("[/INST]"))
    pieces = [rendered[:cut], rendered[cut:]]  # the prompt and the answer tokenized apart
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    assert ids != tokenizer(rendered, add_special_tokens=False)["input_ids"]  # "▁Plain" vs "Plain"
    conversations[0] = replace(conversations[0], messages=to_conversation(
        conversation(FAMILIES["mistral"], "Plain")
    ).messages)  # fmt: skip
    examples[0] = replace(
        examples[0], input_ids=np.asarray(ids, np.int32), labels=np.asarray(ids, np.int32)
    )
    report = mask_report(renderer, conversations, examples, [], 0)
    assert report["whole_text_tokenization_mismatches"] == 1
    assert {p["row"] for p in report["problems"]} == {"d.jsonl:1"}
    assert any("whole rendered text" in p["problem"] for p in report["problems"])
    with pytest.raises(MaskError, match="d.jsonl:1"):
        preflight(report)
