"""sftlab's own turn formats, for models that ship without a chat template (pretrained bases).

Each format is a Jinja file in sftlab/assets/templates. `template.chat_template: auto` on a model
without a template picks its family's format when the family's turn markers are single tokens of
the vocabulary: a base model's vocabulary holds the markers its instruction-tuned sibling was
trained with (Gemma's <start_of_turn>/<end_of_turn>, ids 105/106), so the tuned model will speak
the format the rest of its ecosystem (llama.cpp, Ollama, vLLM) expects. Anything else is a choice
the user has to make: sftlab stops and names the options rather than guess.
"""

from __future__ import annotations

from importlib.resources import files

# name: the turn markers that must be tokens of the vocabulary for `auto` to pick the format.
# `plain` has none and is never picked by `auto`.
MARKERS: dict[str, tuple[str, ...]] = {
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "mistral": ("[INST]", "[/INST]"),
    "plain": (),
}
NAMES = tuple(MARKERS)


def source(name: str) -> str:
    """The template's Jinja source (one trailing newline dropped, as Jinja itself drops it)."""
    text = files("sftlab").joinpath("assets", "templates", f"{name}.jinja").read_text("utf-8")
    return text[:-1] if text.endswith("\n") else text


def single_token_ids(tokenizer, tokens: tuple[str, ...]) -> dict[str, int | None]:
    """Each token's id where the vocabulary holds it as one token, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # get_vocab() builds a dict of the whole vocabulary: ~1 s for 262k
        return {t: backend.token_to_id(t) for t in tokens}
    vocab = tokenizer.get_vocab()
    return {t: vocab.get(t) for t in tokens}


def families_in_vocabulary(tokenizer) -> list[str]:
    """Library formats whose markers are all single tokens of this tokenizer."""
    return [
        name
        for name, markers in MARKERS.items()
        if markers and all(i is not None for i in single_token_ids(tokenizer, markers).values())
    ]
