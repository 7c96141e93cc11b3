"""A few embedding rows trained alongside LoRA: the template's control tokens a base model never
learned (its end-of-turn logit is what makes it stop), and marker tokens added to the vocabulary.

Storage and format are peft's own `trainable_token_indices` (a `TrainableTokensLayer` on the input
embedding, tied to the output layer when the model ties them, a second one on the head when it
does not): the adapter folder then saves the rows, `PeftModel.from_pretrained` restores them, and
`merge_and_unload` folds them into the weights, in sftlab and in anyone else's peft code alike.

Only the forward pass is sftlab's (`use_fast_token_rows`, as model/lora.py routes LoRA layers).
peft's forward copies the whole weight with the rows replaced (`index_copy`) at every call and
multiplies by that copy; its backward then computes the full [vocab x hidden] weight gradient to
keep k rows of it. On a 262,144 x 640 embedding (Gemma 3 270M) that is a 670 MB copy and a
[vocab x hidden] GEMM per call, per head chunk. Here the embedding takes the base lookup and swaps
in the k trained rows where those tokens occur, and the head computes the base logits and
overwrites k columns with h @ rows^T: gradients only ever have k rows. The fused loss
(model/loss.py) takes the same rows through `head_rows`. Measured on a tied 262,144 x 640
embedding, 2 rows, 512 input ids and 64 head positions, forward + backward, one thread of a busy
machine: rows frozen 8.6 s, peft's forward 24.5 s, this one 8.6 s (no cost over frozen rows).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def token_rows_target(model: nn.Module, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """`LoraConfig.trainable_token_indices` for `ids`: a plain list where the output layer is tied
    to the input embedding (peft then ties its head rows to the embedding's), else the same ids on
    both layers by module name, so the untied head's rows are trained too."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is embedding.weight:
        return list(ids)
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(embedding)]: list(ids), names[id(head)]: list(ids)}


def _active_rows(layer):
    """(ids, rows) of a TrainableTokensLayer's single active, unmerged adapter, else None."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.trainable_tokens_delta:
        return None
    return layer.token_indices[name], layer.trainable_tokens_delta[name]


def _index_tensor(layer, ids: list[int], device) -> torch.Tensor:
    cached = getattr(layer, "_sftlab_ids", None)
    if cached is None or cached.device != device or cached.numel() != len(ids):
        cached = torch.tensor(ids, dtype=torch.long, device=device)
        layer._sftlab_ids = cached
    return cached


def _slot_table(layer, ids: list[int], size: int, device) -> torch.Tensor:
    """vocab -> position of the token among the trained rows (-1: not trained), built once."""
    cached = getattr(layer, "_sftlab_slots", None)
    if cached is None or cached.device != device or cached.numel() != size:
        cached = torch.full((size,), -1, dtype=torch.long, device=device)
        cached[torch.tensor(ids, device=device)] = torch.arange(len(ids), device=device)
        layer._sftlab_slots = cached
    return cached


def _fast_forward(self, x, *args, **kwargs):
    """peft's TrainableTokensLayer forward, same result, without copying the whole weight."""
    active = _active_rows(self)
    base = self.base_layer
    supported = type(base) is nn.Linear or isinstance(base, nn.Embedding)
    if active is None or args or kwargs or not supported:
        return type(self).forward(self, x, *args, **kwargs)
    ids, rows = active
    if isinstance(base, nn.Embedding):
        out = base(x)
        slots = _slot_table(self, ids, base.num_embeddings, x.device)[x]
        picked = F.embedding(slots.clamp(min=0), rows.to(base.weight.dtype))
        scale = getattr(base, "embed_scale", None)  # Gemma's scaled embedding (as peft does)
        if scale is not None:
            picked = picked * scale.to(base.weight.dtype)
        return torch.where((slots >= 0).unsqueeze(-1), picked.to(out.dtype), out)
    # The head: the frozen layer's logits, k columns replaced. In place is safe for autograd:
    # F.linear saves its input and weight for backward, not its output.
    out = base(x)
    index = _index_tensor(self, ids, out.device)
    bias = None if base.bias is None else base.bias[index]
    columns = F.linear(x, rows.to(base.weight.dtype), bias)
    return out.index_copy_(-1, index, columns.to(out.dtype))


def use_fast_token_rows(model: nn.Module) -> int:
    """Route every peft TrainableTokensLayer through `_fast_forward`; returns how many."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    layers = [m for m in model.modules() if type(m) is TrainableTokensLayer]
    for layer in layers:
        layer.forward = types.MethodType(_fast_forward, layer)
    return len(layers)


def head_rows(head: nn.Module):
    """(plain head layer, row ids tensor, trained rows) when `head` is a peft TrainableTokens
    wrapper around a linear head with one active adapter; (head, None, None) for anything else."""
    adapter = getattr(head, "token_adapter", None)
    if adapter is None:
        return head, None, None
    active = _active_rows(adapter)
    if active is None:
        return head, None, None
    ids, rows = active
    return adapter.base_layer, _index_tensor(adapter, ids, rows.device), rows


def trained_rows(model: nn.Module) -> list[int]:
    """The token ids whose rows the model trains (peft TrainableTokens), sorted."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    found: set[int] = set()
    for module in model.modules():
        if type(module) is TrainableTokensLayer:
            for ids in module.token_indices.values():
                found.update(int(i) for i in ids)
    return sorted(found)


# -- which rows a base model never learned ------------------------------------------------------
#
# Two signals, because they catch different things (both measured on Gemma 3 270M base with its
# turn format on 12 Alpaca rows):
# - behaviour: the base model's probability of each control token where the template puts it
#   (the end-of-turn token at the end of every turn, the start marker after it), against the
#   median probability of the text tokens of the same rows. Gemma base: <end_of_turn> ~1e-15,
#   <start_of_turn> ~1e-13, text 0.33. This is what decides whether a model stops. Relative to
#   the text so that a model that has learned nothing at all (a random test model: everything
#   ~1/vocab) does not have its template tokens singled out.
# - weights: a row that sits at the vocabulary's mean embedding was never moved by training (new
#   markers start exactly there, model/vocab.py). Gemma's embedding rows all have norm ~1.03
#   and its turn markers are at the 3rd percentile of the distance to the mean, like thousands
#   of rare ordinary tokens: weight statistics alone cannot find them, hence the behaviour check.
TEXT_RATIO = 0.01  # a control token 100x less likely than the text around it is not learned
MEAN_RATIO = 0.25  # closer to the mean row than a quarter of the vocabulary's median distance
CHECK_ROWS = 8
TEXT_POSITIONS = 64  # text tokens sampled per row for the reference probability


def control_token_ids(tokenizer, end_of_turn_id: int, added_ids=()) -> set[int]:
    """Special and added tokens: the only ones a template can put in a row (typed in content,
    their text stays text, see template/wholetext.py), plus the end-of-turn token."""
    ids = set(tokenizer.all_special_ids) | {int(i) for i in tokenizer.added_tokens_decoder}
    return ids | {int(end_of_turn_id)} | {int(i) for i in added_ids}


def _distance_to_mean(weight: torch.Tensor, block: int = 32768) -> torch.Tensor:
    """||row - mean row|| for every row, a block at a time (no [vocab x hidden] temporary)."""
    mean = weight.float().mean(dim=0)
    return torch.cat([(weight[i : i + block].float() - mean).norm(dim=1)
                      for i in range(0, weight.shape[0], block)])  # fmt: skip


def _row_probabilities(model, ids: list[int], control: set[int]):
    """(control token -> probabilities, text probabilities) of the row's next tokens; position 0
    (the first token after a row's start) is skipped: any text may begin there."""
    wanted = [p for p in range(1, len(ids) - 1) if ids[p + 1] in control]
    text = [p for p in range(1, len(ids) - 1) if ids[p + 1] not in control]
    text = text[:: max(1, -(-len(text) // TEXT_POSITIONS))]
    keep = sorted(wanted + text)
    if not keep:
        return {}, []
    x = torch.tensor([ids], device=model.device)
    try:
        at = torch.tensor(keep, device=x.device)
        logits = model(input_ids=x, logits_to_keep=at, use_cache=False).logits[0]
    except TypeError:  # a model without logits_to_keep
        logits = model(input_ids=x, use_cache=False).logits[0, keep]
    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor([ids[p + 1] for p in keep], device=logp.device)
    probs = logp.gather(1, targets[:, None]).squeeze(1).exp().tolist()
    out: dict[int, list[float]] = {}
    text_probs = []
    for p, prob in zip(keep, probs, strict=True):
        if ids[p + 1] in control:
            out.setdefault(ids[p + 1], []).append(prob)
        else:
            text_probs.append(prob)
    return out, text_probs


@torch.no_grad()
def check_untrained_tokens(model, rows, control: set[int], tokenizer=None) -> dict:
    """Which tokens of `rows` (token id lists: rendered training rows) have rows the model has not
    learned. The report of the pre-flight mask report's `untrained_tokens` key."""
    was_training = model.training
    model.eval()
    control_probs: dict[int, list[float]] = {}
    text: list[float] = []
    checked = [list(map(int, r)) for r in rows[:CHECK_ROWS]]
    try:
        for ids in checked:
            found, text_probs = _row_probabilities(model, ids, control)
            text += text_probs
            for token, probs in found.items():
                control_probs.setdefault(token, []).extend(probs)
    finally:
        model.train(was_training)
    layers = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not layers[0]:
        layers.append(head.weight)
    distances = [_distance_to_mean(w.detach()) for w in layers]
    medians = [float(d.median()) for d in distances]
    text_median = float(torch.tensor(text).median()) if text else float("nan")
    used = sorted({t for ids in checked for t in ids})
    tokens = []
    for t in used:
        ratio = min(float(d[t]) / m if m else 1.0 for d, m in zip(distances, medians, strict=True))
        probs = control_probs.get(t)
        p = float(torch.tensor(probs).median()) if probs else None
        reasons = []
        if p is not None and text and p < TEXT_RATIO * text_median:
            reasons.append(f"p={p:.1e} where the template puts it (text: {text_median:.2f})")
        if ratio < MEAN_RATIO:
            reasons.append(f"row at the mean embedding (distance {ratio:.2f} of the median)")
        if t in control or reasons:
            tokens.append({
                "id": t, "token": tokenizer.convert_ids_to_tokens(t) if tokenizer else str(t),
                "control": t in control, "probability": p, "distance_to_mean": round(ratio, 4),
                "flagged": bool(reasons), "why": "; ".join(reasons),
            })  # fmt: skip
    return {
        "rows_checked": len(checked),
        "text_probability": text_median,
        "tokens": tokens,
        "flagged": [e["id"] for e in tokens if e["flagged"]],
    }


def select_token_rows(setting, flagged, added_ids, vocab_size: int) -> list[int]:
    """The rows to train for `train.token_rows`: auto = the flagged tokens and the markers the
    template added to the vocabulary; none; or an explicit list of ids."""
    if setting == "none":
        return []
    if setting == "auto":
        return sorted({int(i) for i in flagged} | {int(i) for i in added_ids})
    bad = [i for i in setting if not 0 <= int(i) < vocab_size]
    if bad:
        from sftlab.core.errors import ConfigError

        where = f"the model's vocabulary (0..{vocab_size - 1})"
        raise ConfigError([f"train.token_rows: id(s) {bad} are not in {where}"])
    return sorted({int(i) for i in setting})


def plan_token_rows(model, setting, renderer, examples, say=print) -> tuple[list[int], dict]:
    """Check the base `model` on the first training rows, choose the rows `setting`
    (train.token_rows) trains, and say so; (rows, the report for mask_report.json)."""
    fmt, tokenizer = renderer.fmt, renderer.tokenizer
    added = tuple(getattr(fmt, "added_token_ids", ()))
    control = control_token_ids(tokenizer, fmt.end_of_turn_id, added)
    report = check_untrained_tokens(model, [e.input_ids for e in examples], control, tokenizer)
    vocab = model.get_input_embeddings().weight.shape[0]
    rows = select_token_rows(setting, report["flagged"], added, vocab)
    report |= {"setting": setting, "trained_rows": rows}
    flagged = [e for e in report["tokens"] if e["flagged"]]
    if flagged:
        names = ", ".join(f"{e['token']} ({e['id']}): {e['why']}" for e in flagged)
        action = f"training rows {rows} (train.token_rows)"
        if setting == "auto":
            action = "training their rows (train.token_rows: auto)"
        elif setting == "none":
            action = "NOT training their rows (train.token_rows: none): the model may not stop"
        say(f"untrained template tokens: {names}; {action}")
    elif rows:
        say(f"training the embedding rows of tokens {rows} (train.token_rows)")
    return rows, report
