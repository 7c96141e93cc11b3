"""New template markers as tokens: added to the tokenizer, and rows for them in the model.

A turn format whose markers are not in a model's vocabulary (ChatML on Gemma) would otherwise be
tokenized as text: `<|im_end|>` becomes six ordinary pieces, generation cannot stop on one id, and
a user who types the marker forges a turn. So the markers become special tokens, and the model's
embedding grows by that many rows.

New rows start at the mean of the existing input embeddings, not at random: a random row has a
norm unlike any learned token's and, through the tied output layer, a logit that can dominate the
softmax before a single step (Hewitt, "Initializing new word embeddings for pretrained language
models", 2021). The mean keeps the new tokens' logits near the average ones until training moves
them. The rows must then be trained (ChatFormat.added_token_ids lists them for
`train.token_rows: auto`).
"""

from __future__ import annotations

import torch


def add_marker_tokens(tokenizer, markers: tuple[str, ...]) -> list[int]:
    """Add the markers the vocabulary lacks as special tokens; their new ids."""
    from sftlab.template.library import single_token_ids

    missing = [m for m, i in single_token_ids(tokenizer, markers).items() if i is None]
    if missing:
        from tokenizers import AddedToken

        # special: matched before normalisation, skipped when decoding an answer, and read as
        # text where a user types it (template/wholetext.py)
        tokenizer.add_tokens(
            [AddedToken(m, special=True, normalized=False) for m in missing], special_tokens=True
        )
    return [tokenizer.convert_tokens_to_ids(m) for m in missing]


@torch.no_grad()
def grow_embeddings(model, added_ids) -> None:
    """Give the model rows for `added_ids`, set to the mean of the other rows (input and, when
    untied, output layer). A tied head stays tied: resizing re-ties it. Deterministic, so a
    reload reproduces the rows a run started from."""
    added = sorted(set(int(i) for i in added_ids))
    if not added:
        return
    embed = model.get_input_embeddings()
    rows = embed.weight.shape[0]
    kept = torch.ones(rows, dtype=torch.bool)
    kept[[i for i in added if i < rows]] = False  # rows already there (padding) are not learned
    input_mean = embed.weight[kept].float().mean(dim=0)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embed.weight
    output_mean = None if output is None or tied else output.weight[kept].float().mean(dim=0)
    if added[-1] >= rows:
        # mean_resizing=False: transformers' mean init samples around the mean (random); the
        # rows are set to the mean itself below.
        model.resize_token_embeddings(added[-1] + 1, mean_resizing=False)
    embed = model.get_input_embeddings()
    embed.weight[added] = input_mean.to(embed.weight.dtype)
    if output_mean is not None:
        head = model.get_output_embeddings()
        head.weight[added] = output_mean.to(head.weight.dtype)
