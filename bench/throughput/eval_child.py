"""Held-out loss of what the training runs saved, both systems scored by the same code:
`python -m throughput.eval_child SPEC.json`.

Each run's weights (a LoRA adapter, or a full model) are loaded onto the fp32 base and passed
to `sftlab.eval.loss.conversation_loss` with sftlab's Renderer for the template training used;
fp32, no autocast. A separate process, so the training children's memory figures exclude it."""

from __future__ import annotations

import shutil
from pathlib import Path

from throughput import common as c
from throughput.prepare_child import renderer_for, to_conversation


def trained_model(weights: Path, method: str, model: str):
    import torch

    from sftlab.model.load import load_model, resolve_model

    if method == "lora":
        from peft import PeftModel

        base = load_model(resolve_model(model), dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(weights))  # restores trained token rows too
    return load_model(resolve_model(str(weights)), dtype=torch.float32)


def run(spec: dict) -> dict:
    from sftlab.eval.loss import conversation_loss

    renderer = renderer_for(spec["model"], spec["max_length"])
    convs = [to_conversation(m) for m in c.read_messages(Path(spec["eval_file"]))]
    losses = {}
    for weights in spec["weights"]:
        model = trained_model(Path(weights), spec["method"], spec["model"]).eval()
        losses[weights] = conversation_loss(model, renderer, convs)
        del model
        if spec.get("delete_full_models") and spec["method"] == "full":
            shutil.rmtree(weights, ignore_errors=True)  # ~0.5-1 GB each; the loss is what we keep
    return {"eval_loss": losses}


if __name__ == "__main__":
    c.child_main(run)
