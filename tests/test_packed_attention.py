"""Packed rows never attend across examples, whatever the attention implementation and however
many rows a micro-batch holds (issue 11, item 4; invariant 6).

Transformers keeps packed examples apart in two ways (see device.packs_into_one_row): mask-based
implementations build a block-diagonal mask from each row's restarting position ids; flash
attention derives cu_seqlens from the position ids only when the batch has ONE row, and runs plain
causal attention over several rows. The flash kernel needs a GPU, so the flash case runs here with
`emulated_flash`: transformers' own decision functions (`_is_packed_sequence`,
`prepare_fa_kwargs_from_position_ids`) around an SDPA kernel given the mask flash would apply.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from sftlab.core.errors import ModelError
from sftlab.core.types import IGNORE_INDEX
from sftlab.model.attention import LEAN_EAGER
from sftlab.model.device import packs_into_one_row
from sftlab.model.loss import SupervisedLoss
from sftlab.pack.collate import collate
from sftlab.pack.packing import make_row
from test_loss import EOS, make_examples, sharp_model

EMULATED_FLASH = "sftlab_test_flash_attention"  # "flash" in the name: transformers treats it so


def emulated_flash(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """What transformers' flash path computes, decided by its own code: varlen (one sequence per
    cu_seqlens block) when `_is_packed_sequence` says so, else causal attention over each row."""
    from transformers.modeling_flash_attention_utils import (
        _is_packed_sequence,
        prepare_fa_kwargs_from_position_ids,
    )

    batch, _, length, _ = query.shape
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    position_ids = kwargs.get("position_ids")
    if _is_packed_sequence(position_ids, batch):
        (starts, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
        sequence = torch.zeros(length, dtype=torch.long)
        sequence[starts[1:-1].long()] = 1
        sequence = sequence.cumsum(0)
        allowed &= sequence[:, None] == sequence[None, :]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture(autouse=True)
def _register_emulated_flash(monkeypatch):
    """Register the emulation under a flash name, and let transformers skip loading a flash
    kernel for it (the one thing a CPU machine cannot do; every other step is transformers')."""
    import transformers.modeling_utils as modeling_utils
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(EMULATED_FLASH, emulated_flash)
    AttentionMaskInterface.register(EMULATED_FLASH, flash_attention_mask)
    load_kernel = modeling_utils.lazy_import_flash_attention

    def load_unless_emulated(implementation, *args, **kwargs):
        if implementation != EMULATED_FLASH:
            return load_kernel(implementation, *args, **kwargs)
        return None

    monkeypatch.setattr(modeling_utils, "lazy_import_flash_attention", load_unless_emulated)


def two_packed_rows():
    """Four examples packed two per row: a [2 x L] micro-batch, the second row with a pad tail.
    Targets mark every real token, so the loss path yields logits at every real position."""
    examples = make_examples()
    batch = collate([make_row(examples[:2]), make_row(examples[2:])], pad_id=EOS)
    real = torch.zeros_like(batch.targets, dtype=torch.bool)
    for b, n in enumerate(
        (len(examples[0]) + len(examples[1]), len(examples[2]) + len(examples[3]))
    ):
        real[b, :n] = True
    everywhere = torch.where(real, torch.zeros_like(batch.targets), IGNORE_INDEX)
    assert batch.input_ids.shape[0] == 2 and not bool(real.all())  # two rows, a pad tail
    return examples, batch, everywhere


def unpacked_logits(model, examples, device="cpu") -> torch.Tensor:
    """Each example alone, through the model's own forward: the logits packing must reproduce."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        return torch.cat(
            [
                model(
                    input_ids=torch.as_tensor(e.input_ids, dtype=torch.long, device=device)[None],
                    use_cache=False,
                ).logits[0]
                for e in examples
            ]
        )


@pytest.mark.parametrize("implementation", ["eager", "sdpa", LEAN_EAGER, EMULATED_FLASH])
def test_packed_rows_give_each_example_its_unpacked_logits(implementation):
    model = sharp_model()
    examples, batch, everywhere = two_packed_rows()
    expected = unpacked_logits(model, examples)
    wrapped = SupervisedLoss(model, attention=implementation)
    shapes = []
    wrapped.decoder.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    with torch.no_grad():
        hidden, _ = wrapped.supervised_hidden(batch.input_ids, batch.position_ids, everywhere)
        logits = wrapped.head(hidden)
    assert model.config._attn_implementation == implementation
    # flash keeps examples apart only in a one-row batch: the rows go in flattened
    rows, width = batch.input_ids.shape
    assert shapes == [(1, rows * width) if implementation == EMULATED_FLASH else (rows, width)]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_emulated_flash_on_several_rows_does_mix_examples():
    """The negative control: the decoder called directly with the two-row batch under (emulated)
    flash attention lets examples attend to the ones before them in their row, as the real kernel
    does. This is what SupervisedLoss avoided failing to flatten."""
    model = sharp_model()
    examples, batch, everywhere = two_packed_rows()
    expected = unpacked_logits(model, examples)
    model.set_attn_implementation(EMULATED_FLASH)
    with torch.no_grad():
        hidden = model.get_decoder()(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[everywhere != IGNORE_INDEX])
    first = len(examples[0])  # the first example of each row sees nothing before it: equal
    torch.testing.assert_close(logits[:first], expected[:first], rtol=1e-4, atol=1e-4)
    assert float((logits - expected).abs().max()) > 0.1


def test_packed_loss_under_flash_equals_the_unpacked_loss():
    model = sharp_model()
    examples, batch, _ = two_packed_rows()
    alone = collate([make_row([e]) for e in examples], pad_id=EOS)
    with torch.no_grad():
        reference = SupervisedLoss(model, attention="eager")(
            alone.input_ids, alone.position_ids, alone.targets
        )
        flash = SupervisedLoss(model, attention=EMULATED_FLASH)(
            batch.input_ids, batch.position_ids, batch.targets
        )
    torch.testing.assert_close(flash, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("implementation", "one_row"),
    [
        ("flash_attention_2", True),
        ("flash_attention_3", True),
        ("kernels-community/flash-attn2", True),  # a hub kernel: varlen like the package
        ("sdpa", False),
        ("eager", False),
        ("flex_attention", False),
        (LEAN_EAGER, False),
    ],
)
def test_which_implementations_need_the_rows_flattened(implementation, one_row):
    assert packs_into_one_row(implementation) is one_row


def test_an_implementation_that_may_mix_examples_is_refused_with_a_clear_error():
    """A custom kernel with no mask function and no flash semantics: nothing tells it where one
    example ends, so training with it is refused before the first step."""
    from transformers import AttentionInterface

    from sftlab.model.attention import lean_eager_attention

    AttentionInterface.register("sftlab_test_maskless", lean_eager_attention)
    with pytest.raises(ModelError, match="sftlab_test_maskless.*packed examples apart.*sdpa"):
        packs_into_one_row("sftlab_test_maskless")
    with pytest.raises(ModelError, match="sftlab_test_maskless"):
        SupervisedLoss(make_tiny_model(), attention="sftlab_test_maskless")


def _real_flash_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(
    not _real_flash_available(), reason="needs a CUDA GPU and the flash_attn package"
)
def test_real_flash_attention_keeps_packed_rows_apart_on_a_gpu():
    """The same check with the real kernel, where there is one (bf16: flash runs no fp32)."""
    model = sharp_model().to("cuda", torch.bfloat16)
    examples, batch, everywhere = two_packed_rows()
    batch = batch.to("cuda")
    expected = unpacked_logits(model, examples, device="cuda").float()
    wrapped = SupervisedLoss(model, attention="flash_attention_2")
    with torch.no_grad():
        hidden, _ = wrapped.supervised_hidden(
            batch.input_ids, batch.position_ids, everywhere.to("cuda")
        )
        logits = wrapped.head(hidden).float()
    scale = float(expected.abs().max())
    assert float((logits - expected).abs().max()) < 0.05 * scale
