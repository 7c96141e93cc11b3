"""The merged export is checked against the forward that trained the adapter (fused LoRA
function, not peft's own forward) on several rows, and a merge that went wrong is refused."""

from __future__ import annotations

import pytest
import torch

from sftlab.core.errors import SftlabError
from sftlab.export.artifacts import load_run
from sftlab.export.merge import PARITY_TOLERANCE, check_merge, probe_rows, training_logits
from sftlab.recipes.sft import train
from test_recipe_smoke import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    return train(tiny_config(tmp_path_factory.mktemp("export"), tiny_model_dir))


def merged_and_reference(run_dir):
    run = load_run(run_dir, merged=False)
    rows = probe_rows(run.renderer)
    reference = training_logits(run.model, rows)
    return run.model.merge_and_unload(), rows, reference


def test_reference_is_the_training_forward_on_several_rows(tiny_run):
    run = load_run(tiny_run, merged=False)
    rows = probe_rows(run.renderer)
    assert len(rows) >= 4 and len({len(r) for r in rows}) == len(rows)  # different shapes
    reference = training_logits(run.model, rows)
    # The same forward with the adapter switched off differs: the reference includes the
    # trained adapter (its B moved away from zero), so the check below compares something.
    with run.model.disable_adapter(), torch.no_grad():
        base = [run.model(input_ids=torch.tensor([r])).logits[0] for r in rows]
    assert max(float((a - b).abs().max()) for a, b in zip(reference, base, strict=True)) > 1e-3


def test_a_correct_merge_passes(tiny_run):
    merged, rows, reference = merged_and_reference(tiny_run)
    assert check_merge(merged, rows, reference) <= PARITY_TOLERANCE


def test_a_corrupted_merge_fails_the_check(tiny_run):
    merged, rows, reference = merged_and_reference(tiny_run)
    weight = merged.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.05 * torch.randn_like(weight, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(SftlabError, match=r"merged model differs from the trained one .*row \d"):
        check_merge(merged, rows, reference)
