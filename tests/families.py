"""Tokenizers of the main model families, trained in code with the `tokenizers` library on a small
corpus (nothing downloaded), each with its family's chat template from tests/fixtures/templates.

    family     model behaviour mimicked                       pre-tokenization
    llama2     Llama 2 / TinyLlama (legacy SentencePiece)     normaliser prepends "▁" to every
                                                              segment, also after special tokens
    mistral    Mistral v0.1 (SentencePiece, prepend "first")  Metaspace, dummy prefix at the start only
    phi3       Phi-3 (SentencePiece, "always", turn markers   Metaspace "always"; <|end|> <|user|> ...
               that swallow the whitespace after them)        with rstrip=True, as Phi-3 ships them
    llama3     Llama 3 (byte-level BPE, header tokens)        Llama 3 split regex + ByteLevel
    chatml     Qwen / SmolLM2 (byte-level BPE, ChatML)        GPT-2 regex ByteLevel
    gemma      Gemma (SentencePiece without dummy prefix,     spaces replaced by "▁", no split
               <start_of_turn>/<end_of_turn>)

The real Gemma tokenizer is not available offline here (its model package is not installed), so
`gemma` is a Gemma-style stand-in with the same normaliser, no dummy prefix and the same markers.
Vocabularies are trained with SentencePiece's splitting rules (no merges across scripts, digits
apart), then served with the family's own inference-time pre-tokenizer, as the HF conversions do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"

_LINES = [
    "The quick brown fox jumps over the lazy dog. It was 42 degrees at 10:30!",
    "  Indented text, with two leading spaces; and a trailing space ",
    "\nA line after a newline.\n\nTwo newlines, then more text.\n\n\nThree.",
    "!Exclamation first? Yes: punctuation (and brackets) [INST] [/INST] <<SYS>> <</SYS>>",
    "Digits: 0 1 2 3 4 5 6 7 8 9 12345 2024-05-17 3.14159 answer 7",
    "日本語の答えはこれです。中文的回答也在这里。한국어 답변도 있어요.",
    "user assistant system model tool: Hello! How can I help you today?",
    'Weather in Paris? It is 21 degrees. {"city": "Paris", "temp": 21}',
    "<tool_call> </tool_call> <tools> </tools> <tool_response> function name arguments",
    "You are a helpful assistant. Be brief. Answer the question, then stop.",
]
CORPUS = [line * k for line in _LINES for k in (1, 2, 3)] * 20


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # file name in tests/fixtures/templates
    eot: str  # what the template writes after an assistant message's content, up to the turn end
    system: bool  # the template accepts a system message
    strips: bool  # the template trims message content
    opens: str = ""  # what the template writes before an assistant's content, after the prompt


FAMILIES = {
    "llama2": Family("llama2", "llama2.jinja", " </s>", True, True, opens=" "),
    "mistral": Family("mistral", "mistral.jinja", "</s>", False, False),
    "phi3": Family("phi3", "phi3.jinja", "<|end|>", True, False),
    "llama3": Family("llama3", "llama3.jinja", "<|eot_id|>", True, True),
    "chatml": Family("chatml", "chatml.jinja", "<|im_end|>", True, False),
    "gemma": Family("gemma", "gemma.jinja", "<end_of_turn>", False, True),
}

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _spm_training_split(metaspace: bool):
    """SentencePiece never merges across scripts or digits; train with that split."""
    from tokenizers import pre_tokenizers as pt

    steps = [pt.UnicodeScripts(), pt.Digits(individual_digits=True)]
    if metaspace:
        steps.insert(0, pt.Metaspace(replacement="▁", prepend_scheme="never", split=True))
    return pt.Sequence(steps)


def _spm_decoder(strip_first: bool):
    from tokenizers import decoders

    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if strip_first else []))


def _backend(name: str):
    """(trained backend tokenizer, its special tokens as (content, rstrip))."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pt

    byte_level = name in ("llama3", "chatml")
    specials = {
        "llama2": ["<unk>", "<s>", "</s>"],
        "mistral": ["<unk>", "<s>", "</s>"],
        "phi3": ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|end|>"],
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"],
        "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
    }[name]  # fmt: skip
    unk = None if byte_level else "<unk>"
    tok = Tokenizer(models.BPE(unk_token=unk, byte_fallback=not byte_level))
    if byte_level:
        tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False, use_regex=name == "chatml")
        if name == "llama3":
            tok.pre_tokenizer = pt.Sequence([
                pt.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pt.ByteLevel(add_prefix_space=False, use_regex=False),
            ])  # fmt: skip
        tok.decoder = decoders.ByteLevel()
        alphabet = pt.ByteLevel.alphabet()
    else:
        if name in ("llama2", "gemma"):
            steps = [normalizers.Replace(" ", "▁")]
            if name == "llama2":
                steps.insert(0, normalizers.Prepend("▁"))
            tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = _spm_training_split(metaspace=name in ("mistral", "phi3"))
        alphabet = sorted(set("".join(_LINES).replace(" ", "▁")) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    if not byte_level:
        # Serve with the family's own inference-time splitting, as HF's conversions do.
        scheme = {"mistral": "first", "phi3": "always"}.get(name)
        tok.pre_tokenizer = (
            pt.Metaspace("▁", prepend_scheme=scheme, split=False) if scheme else None
        )
        tok.decoder = _spm_decoder(strip_first=name != "gemma")
    if name == "phi3":  # Phi-3's turn markers eat the whitespace after them
        tok.add_special_tokens(
            [AddedToken(t, rstrip=True, special=True, normalized=False) for t in specials[4:]]
        )
    return tok, specials


@cache
def family_tokenizer(name: str):
    from transformers import PreTrainedTokenizerFast

    backend, specials = _backend(name)
    roles = {
        "llama2": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
        "mistral": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
        "phi3": dict(bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>"),
        "llama3": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
        "chatml": dict(eos_token="<|im_end|>", pad_token="<|im_end|>"),
        "gemma": dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"),
    }[name]
    named = set(roles.values())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        additional_special_tokens=[t for t in specials if t not in named],
        **roles,
    )
    tokenizer.chat_template = (TEMPLATES / FAMILIES[name].template).read_text(encoding="utf-8")
    return tokenizer


def qwen_tool_tokenizer():
    """The ChatML byte-level tokenizer with the Qwen2.5 tool-calling template."""
    from transformers import PreTrainedTokenizerFast

    backend, _ = _backend("chatml")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = (TEMPLATES / "qwen2.5_tools.jinja").read_text(encoding="utf-8")
    return tokenizer


def expected_supervised(tokenizer, rendered: str, prompt: str, assistant_text: str) -> str:
    """The assistant's text (content + end of turn) as the supervised tokens must decode, less
    the content characters a prompt-side token swallowed (read from the tokenizer's offsets)."""
    start = rendered.index(assistant_text, len(prompt))
    offsets = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    for a, b in offsets["offset_mapping"]:
        if a < start < b:
            return assistant_text[b - start :]
    return assistant_text
