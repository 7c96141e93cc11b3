"""Perplexity equals exp of the mean token loss, computed here independently with plain torch."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from sftlab.config import TemplateConfig
from sftlab.core.errors import DataError
from sftlab.eval.perplexity import perplexity, read_general_text, split_document
from sftlab.template.format import build_chat_format
from sftlab.template.render import Renderer

TEXTS = ["The river runs past the old mill.", "Bread rises when yeast makes gas.", "Hi"]


def independent_mean_loss(model, texts: list[str]) -> tuple[float, int]:
    """Byte tokenizer: ids are the UTF-8 bytes, then EOS (258); no BOS. Every next token counts."""
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([list(text.encode()) + [258]])
        logits = model(input_ids=ids).logits[0, :-1].double()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        total, count = total + float(nll), count + ids.shape[1] - 1
    return total / count, count


def test_perplexity_is_exp_of_the_mean_token_loss(tiny_tokenizer):
    model = make_tiny_model().eval()
    renderer = Renderer(tiny_tokenizer, build_chat_format(tiny_tokenizer, TemplateConfig()))
    result = perplexity(model, renderer, TEXTS)
    with torch.no_grad():
        loss, count = independent_mean_loss(model, TEXTS)
    assert count == (33 + 1 - 1) + (33 + 1 - 1) + (2 + 1 - 1)  # bytes + EOS, minus the first
    assert result["tokens"] == count and result["documents"] == 3
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_general_text_default_and_user_files(tmp_path):
    shipped = read_general_text()
    assert len(shipped) >= 12 and all(len(d) <= 2000 for d in shipped)
    txt = tmp_path / "prose.txt"
    txt.write_text("First document.\n\nSecond document.\n")
    assert read_general_text(txt) == ["First document.", "Second document."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_general_text(bad)


def test_long_documents_are_cut_at_spaces():
    assert split_document("aaa bbb ccc", max_chars=7) == ["aaa", "bbb ccc"]
    assert split_document("x" * 10, max_chars=4) == ["xxxx", "xxxx", "xx"]
