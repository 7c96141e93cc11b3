"""The fused loss equals each architecture's own forward loss (issue 11, item 6).

SupervisedLoss runs the decoder and the output layer itself, so whatever an architecture's
ForCausalLM.forward does between the output layer and the logits (Gemma 2/3's soft-capping,
Granite's division by logits_scaling, Cohere's logit_scale) must be reproduced or the loss is
silently different. Every architecture the fused path claims is checked here against
`model(input_ids, labels=...).loss`, the model's own forward and loss, on a tiny random model
built from a config in code; architectures it does not claim fall back to the model's forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sftlab.core.types import IGNORE_INDEX, TokenizedExample
from sftlab.model.loss import SupervisedLoss, head_transform
from sftlab.pack.collate import collate
from sftlab.pack.packing import single_rows

VOCAB = 64
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# name -> (config class, settings beyond SHAPE). Head settings are far from the identity so that
# a dropped transform changes the loss (a soft cap of 30 on this model's logits would be ~1.0).
ARCHITECTURES = {
    "Llama": ("LlamaConfig", {}),
    "Mistral": ("MistralConfig", {}),
    "Qwen2": ("Qwen2Config", {}),
    "Qwen3": ("Qwen3Config", {}),
    "Gemma": ("GemmaConfig", {}),
    "Gemma2": ("Gemma2Config", {"final_logit_softcapping": 1.5}),
    "Gemma3": ("Gemma3TextConfig", {"final_logit_softcapping": 1.5}),
    "Phi3": ("Phi3Config", {}),
    "SmolLM3": ("SmolLM3Config", {}),
    "Olmo2": ("Olmo2Config", {}),
    "Granite": ("GraniteConfig", {"logits_scaling": 4.0}),
    "Cohere": ("CohereConfig", {"logit_scale": 0.25}),
    "Cohere2": ("Cohere2Config", {"logit_scale": 0.25}),
}
HEAD_TRANSFORMED = {"Gemma2", "Gemma3", "Granite", "Cohere", "Cohere2"}


def tiny(config_name: str, settings: dict, model_class: str | None = None, seed: int = 0):
    """A tiny random model of the architecture, with weights large enough (std 0.3) that its
    logits are far from uniform: transforms of the logits then change the loss visibly."""
    import transformers

    config = getattr(transformers, config_name)(**SHAPE, **settings)
    torch.manual_seed(seed)
    cls = model_class or config_name.replace("TextConfig", "Config").replace(
        "Config", "ForCausalLM"
    )
    model = getattr(transformers, cls)(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def batch_of_examples():
    """Two conversations of different lengths, prompts unsupervised, one row each (padded)."""
    rng = np.random.default_rng(7)
    examples = []
    for n, prompt in [(19, 6), (11, 4)]:
        ids = rng.integers(3, VOCAB, size=n).astype(np.int32)
        labels = ids.copy()
        labels[:prompt] = IGNORE_INDEX
        examples.append(TokenizedExample(ids, labels))
    return collate(single_rows(examples), pad_id=0)


def own_forward_loss(model, batch) -> torch.Tensor:
    """The summed loss the model's own forward computes from labels (it shifts them itself):
    `targets[t]` is the label of position t + 1."""
    labels = torch.full_like(batch.targets, IGNORE_INDEX)
    labels[:, 1:] = batch.targets[:, :-1]
    out = model(input_ids=batch.input_ids, labels=labels, use_cache=False)
    return out.loss * batch.n_supervised


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fused_loss_equals_the_architectures_own_forward_loss(name):
    config_name, settings = ARCHITECTURES[name]
    model = tiny(config_name, settings)
    wrapped = SupervisedLoss(model, chunk_tokens=8)
    assert head_transform(model) is not None and wrapped.transform is not None  # claimed
    batch = batch_of_examples()

    model.zero_grad(set_to_none=True)
    reference = own_forward_loss(model, batch)
    reference.backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    got = wrapped(batch.input_ids, batch.position_ids, batch.targets)  # grad on: fused path
    got.backward()
    torch.testing.assert_close(got, reference.float(), rtol=1e-5, atol=1e-5)
    assert grads(model).keys() == want.keys()
    for key, grad in grads(model).items():
        torch.testing.assert_close(
            grad, want[key], rtol=1e-4, atol=1e-5 * float(want[key].abs().max())
        )
    with torch.no_grad():  # the chunked path evaluation takes
        scored = wrapped(batch.input_ids, batch.position_ids, batch.targets)
    torch.testing.assert_close(scored, reference.detach().float(), rtol=1e-5, atol=1e-5)

    if name in HEAD_TRANSFORMED:  # the check can fail: without the transform the loss differs
        with torch.no_grad():
            hidden, wanted = wrapped.supervised_hidden(
                batch.input_ids, batch.position_ids, batch.targets
            )
            bare = F.cross_entropy(wrapped.head(hidden), wanted, reduction="sum")
        assert abs(float(bare) - float(reference.detach())) > 0.05 * float(reference.detach())


def test_an_architecture_with_an_unknown_head_falls_back_to_its_own_forward(capsys):
    """GraniteMoe divides its logits like Granite, but the fused path does not claim it: the loss
    comes from the model's own forward, and a note says so once."""
    import sftlab.model.loss as loss_module

    loss_module._noted_fallbacks.discard("GraniteMoeForCausalLM")
    model = tiny("GraniteMoeConfig", {"logits_scaling": 4.0, "num_local_experts": 2,
                                       "num_experts_per_tok": 1})  # fmt: skip
    wrapped = SupervisedLoss(model, chunk_tokens=8)
    assert wrapped.transform is None and not wrapped.fused
    note = capsys.readouterr().err
    assert "GraniteMoeForCausalLM" in note and "model's own forward" in note
    SupervisedLoss(model)
    assert capsys.readouterr().err == ""  # once per architecture, not per construction

    batch = batch_of_examples()
    model.zero_grad(set_to_none=True)
    reference = own_forward_loss(model, batch)
    reference.backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    got = wrapped(batch.input_ids, batch.position_ids, batch.targets)
    got.backward()
    torch.testing.assert_close(got, reference.float(), rtol=1e-5, atol=1e-5)
    for key, grad in grads(model).items():
        torch.testing.assert_close(
            grad, want[key], rtol=1e-4, atol=1e-5 * float(want[key].abs().max())
        )


def test_a_subclass_outside_transformers_is_not_trusted():
    """A class that merely inherits a known one (remote code, a user's tweak) may change the
    forward: it takes the model's forward, so its own logit transform counts."""
    from transformers import LlamaForCausalLM

    class Tripled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    import transformers

    config = transformers.LlamaConfig(**SHAPE)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Tripled(config)
    wrapped = SupervisedLoss(model)
    assert wrapped.transform is None
    batch = batch_of_examples()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, use_cache=False).logits  # tripled
        keep = batch.targets != IGNORE_INDEX
        reference = F.cross_entropy(logits[keep], batch.targets[keep], reduction="sum")
        got = wrapped(batch.input_ids, batch.position_ids, batch.targets)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
