"""sftlab's template library for models without a chat template (issue 14).

Golden tests: each library format renders a hand-written expected text, and the trained ids are
that text tokenized whole by the tokenizer itself (what inference engines feed the model). Then
`auto` on a templateless model, markers added to a vocabulary, mean-initialised embedding rows,
and exactly one BOS whichever of tokenizer and template adds it. Tokenizers are built in code:
the byte-level tiny one (conftest) and the family stand-ins (tests/families.py).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import make_tiny_model, make_tiny_tokenizer
from families import family_tokenizer
from sftlab.config import TemplateConfig
from sftlab.core.errors import TemplateError
from sftlab.core.types import Conversation, Message
from sftlab.model.vocab import grow_embeddings
from sftlab.template import library
from sftlab.template.format import build_chat_format
from sftlab.template.inspect import supervised_text
from sftlab.template.render import Renderer

EXCHANGE = (
    ("system", "Be brief."),
    ("user", "What is 2+2?"),
    ("assistant", "4"),
    ("user", "And 3+3?"),
    ("assistant", "6"),
)

# name: (tokenizer, the whole text the format must render, what each answer's tokens decode to)
GOLDEN = {
    "chatml": (
        "tiny",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n6<|im_end|>\n",
        ["4<|im_end|>", "6<|im_end|>"],
    ),
    "gemma": (
        "gemma",
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n6<end_of_turn>\n",
        ["4<end_of_turn>", "6<end_of_turn>"],
    ),
    "llama3": (
        "llama3",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n6<|eot_id|>",
        ["4<|eot_id|>", "6<|eot_id|>"],
    ),
    "mistral": (
        "mistral",
        "<s>[INST] Be brief.\n\nWhat is 2+2? [/INST]4</s>[INST] And 3+3? [/INST]6</s>",
        ["4</s>", "6</s>"],
    ),
    "plain": (
        "tiny",
        "Be brief.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4<|im_end|>\n\n"
        "### Instruction:\nAnd 3+3?\n\n### Response:\n6<|im_end|>\n\n",
        ["4<|im_end|>", "6<|im_end|>"],
    ),
}


def templateless(name: str):
    """A fresh tokenizer of that kind without a chat template (a pretrained base's)."""
    if name == "tiny":
        return make_tiny_tokenizer(chat_template=None)
    tokenizer = copy.deepcopy(family_tokenizer(name))  # the cached one keeps its template
    tokenizer.chat_template = None
    return tokenizer


def conversation(*pairs) -> Conversation:
    return Conversation(tuple(Message(role, content) for role, content in pairs))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_ids_are_the_whole_expected_text_tokenized(name):
    kind, expected_text, answers = GOLDEN[name]
    tokenizer = templateless(kind)
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template=name))
    renderer = Renderer(tokenizer, fmt)
    example = renderer.encode(conversation(*EXCHANGE))
    assert fmt.name == name
    assert example.input_ids.tolist() == tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    decoded = supervised_text(example, tokenizer)
    assert [d.lstrip(" ") for d in decoded] == answers  # SentencePiece drops a first space
    prompt = renderer.encode_prompt(conversation(*EXCHANGE[:2]))
    assert prompt == example.input_ids.tolist()[: len(prompt)]  # generation prompt is a prefix


def test_library_chatml_is_the_built_in_chatml():
    from sftlab.template import jinja

    assert library.source("chatml") == jinja.CHATML


@pytest.mark.parametrize(("kind", "family"), [("gemma", "gemma"), ("llama3", "llama3"),
                                              ("tiny", "chatml")])  # fmt: skip
def test_auto_on_a_templateless_model_picks_its_family_and_says_so(kind, family, capsys):
    tokenizer = templateless(kind)
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template="auto"))
    assert fmt.name == family and fmt.added_token_ids == ()
    assert f"'{family}' turn format" in capsys.readouterr().err
    # the markers are the vocabulary's own tokens: nothing was added
    assert fmt.end_of_turn_id == tokenizer.convert_tokens_to_ids(library.MARKERS[family][-1])


def test_auto_without_known_markers_stops_and_names_the_options():
    tokenizer = templateless("mistral")  # <unk> <s> </s>: no family's markers are tokens
    with pytest.raises(TemplateError) as err:
        build_chat_format(tokenizer, TemplateConfig(chat_template="auto"))
    message = str(err.value)
    assert "no chat template" in message and ".jinja" in message
    assert all(name in message for name in library.NAMES)


def test_auto_with_markers_of_two_families_stops():
    tokenizer = templateless("gemma")
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    with pytest.raises(TemplateError, match=r"several \(gemma, chatml\)"):
        build_chat_format(tokenizer, TemplateConfig(chat_template="auto"))


def test_the_models_own_template_wins_over_the_library(capsys):
    tokenizer = family_tokenizer("gemma")
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template="auto"))
    assert fmt.name == "model" and fmt.template == tokenizer.chat_template
    assert capsys.readouterr().err == ""


def test_markers_missing_from_the_vocabulary_become_special_tokens():
    tokenizer = templateless("gemma")
    size = len(tokenizer)
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template="chatml"))
    assert list(fmt.added_token_ids) == [size, size + 1]
    assert tokenizer.convert_ids_to_tokens(list(fmt.added_token_ids)) == ["<|im_start|>", "<|im_end|>"]
    assert fmt.end_of_turn_id == size + 1
    # typed by a user, a marker stays text: one <|im_end|> per turn, the template's
    renderer = Renderer(tokenizer, fmt)
    example = renderer.encode(conversation(("user", "say <|im_end|> now"), ("assistant", "ok")))
    ids = example.input_ids.tolist()
    assert ids.count(size + 1) == 2 and ids.count(size) == 2
    assert supervised_text(example, tokenizer) == ["ok<|im_end|>"]


def with_bos_post_processor(tokenizer):
    """The tokenizer puts <bos> before every text it encodes, as Gemma's does."""
    from tokenizers import processors

    bos = tokenizer.convert_tokens_to_ids("<bos>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    assert tokenizer("a")["input_ids"][0] == bos
    return tokenizer, bos


@pytest.mark.parametrize("name", ["gemma", "plain", "chatml"])
def test_exactly_one_bos_whichever_adds_it(name):
    """gemma writes <bos> itself; plain and chatml do not, and get it written first on a
    tokenizer that adds BOS. The ids equal the tokenizer's own encoding with its BOS."""
    tokenizer, bos = with_bos_post_processor(templateless("gemma"))
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template=name))
    example = Renderer(tokenizer, fmt).encode(conversation(("user", "hi"), ("assistant", "yo")))
    ids = example.input_ids.tolist()
    assert ids[0] == bos and ids.count(bos) == 1
    text = tokenizer.decode(ids[1:])  # the text after BOS, as rendered
    assert ids == tokenizer(text, add_special_tokens=True)["input_ids"]


def test_no_bos_is_written_for_a_tokenizer_without_one():
    tokenizer = templateless("tiny")
    fmt = build_chat_format(tokenizer, TemplateConfig(chat_template="plain"))
    assert fmt.template == library.source("plain")  # nothing prepended


# -- embedding rows for added markers ------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_start_at_the_mean_row_and_old_logits_stay(tied):
    model = make_tiny_model(vocab_size=260)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn(260, 32))
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings().weight.detach().clone()
    probe = torch.tensor([[104, 105, 257, 258]])
    with torch.no_grad():
        before = model(probe).logits
    grow_embeddings(model, [260, 261])
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape == (262, 32) and head.shape == (262, 32)
    assert torch.equal(embed[:260], old_input)
    torch.testing.assert_close(embed[260], old_input.mean(0))
    torch.testing.assert_close(embed[261], old_input.mean(0))
    torch.testing.assert_close(head[261], old_output.mean(0))
    assert (head is embed) == tied  # a tied head stays tied, an untied one stays apart
    with torch.no_grad():
        after = model(probe).logits
    torch.testing.assert_close(after[..., :260], before)


def test_unknown_template_name_is_a_clear_error():
    with pytest.raises(TemplateError, match="not auto, one of gemma, llama3, chatml"):
        build_chat_format(templateless("tiny"), TemplateConfig(chat_template="gemma4"))


def test_rows_without_typed_special_tokens_never_build_the_guarded_tokenizer():
    """Building it copies the tokenizer and registers one sentinel per special token: on
    Gemma's 6,249 specials that cost minutes per process, paid even when no row needed it."""
    tokenizer = templateless("tiny")
    renderer = Renderer(tokenizer, build_chat_format(tokenizer, TemplateConfig()))
    renderer.encode(conversation(("user", "hi"), ("assistant", "yo")))
    assert renderer.whole._sentinels is None
    example = renderer.encode(conversation(("user", "say <|im_end|>"), ("assistant", "yo")))
    assert renderer.whole._sentinels is not None
    assert supervised_text(example, tokenizer) == ["yo<|im_end|>"]


def test_a_run_with_added_markers_trains_saves_and_reloads(tmp_path):
    """ChatML on a templateless Gemma-style model: the run grows the embedding for the two
    markers, records them, saves the tokenizer with them, and reloads into the grown shape."""
    from safetensors.torch import load_file

    from sftlab.export.artifacts import load_run
    from sftlab.model.load import ModelRef, load_tokenizer
    from sftlab.recipes.sft import train
    from test_recipe_smoke import tiny_config

    model_dir = tmp_path / "base"
    tokenizer = templateless("gemma")
    vocab = len(tokenizer)
    make_tiny_model(vocab_size=vocab).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = train(tiny_config(tmp_path, model_dir, "template.chat_template=chatml", "train.max_steps=2"))

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["template"] == "chatml"
    assert manifest["added_token_ids"] == [vocab, vocab + 1]
    saved = load_tokenizer(ModelRef("run", str(run / "tokenizer"), True))
    assert saved.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [vocab, vocab + 1]
    # the grown embedding is rebuilt on reload: the adapter holds LoRA and token-row deltas,
    # not two full embedding matrices
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert not [k for k, v in adapter.items() if v.shape[0] == vocab + 2]
    loaded = load_run(run)
    assert loaded.model.get_input_embeddings().weight.shape[0] == vocab + 2
    prompt = loaded.renderer.encode_prompt(conversation(("user", "Say hi.")))
    assert prompt[0] == vocab and prompt.count(vocab) == 2  # <|im_start|> user ... assistant
    assert vocab + 1 in loaded.stop_ids
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt])).logits
    assert logits.shape == (1, len(prompt), vocab + 2)
