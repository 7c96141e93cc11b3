"""Checkpoints that a killed run resumes from to the same result, bit for bit in fp32.

    RUN/checkpoints/step-000040/     a complete checkpoint (written as .partial-*, then renamed)
        trainable.safetensors        the trained parameters only (LoRA weights, or all for full)
        optimizer.pt                 AdamW state (tensors and numbers; loaded with weights_only)
        rng.pt                       torch CPU/CUDA generator states
        state.json                   LoopState (step, epoch, data cursor), python/numpy RNG,
                                     the resolved config and the data/template hashes
    The learning rate needs nothing saved: it is a pure function of the step.

A checkpoint directory only ever appears complete: everything is written into a `.partial-`
folder, flushed to disk, and renamed in one step. Loading ignores anything else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sftlab.core.errors import SftlabError
from sftlab.core.io import write_json

PREFIX = "step-"
FILES = ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    def state(self) -> dict:
        return json.loads((self.path / "state.json").read_text(encoding="utf-8"))


def checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under root, oldest first (half-written ones are never listed)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if (
            entry.is_dir()
            and entry.name.startswith(PREFIX)
            and all((entry / f).is_file() for f in FILES)
        ):
            found.append(Checkpoint(entry, int(entry.name[len(PREFIX) :])))
    return sorted(found, key=lambda c: c.step)


def _discard(folder: Path) -> None:
    """Rename first (atomic), delete after: a crash mid-delete leaves a `.discard-` folder that
    the next run removes, never a half-deleted checkpoint that looks complete."""
    doomed = folder.with_name(f".discard-{folder.name}-{os.getpid()}")
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name; a tensor shared by two names (tied weights) once."""
    seen, out = set(), {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            out[name] = param.detach().contiguous()
    return out


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def _set_rng_state(state: dict, torch_states: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_states["cpu"])
    if torch.cuda.is_available() and "cuda" in torch_states:
        torch.cuda.set_rng_state_all(torch_states["cuda"])


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def save(
    root: Path, model, optimizer, loop_state: dict, meta: dict, keep_last: int, scaler=None
) -> Path:
    """Write checkpoint step-<N> atomically, then delete all but the newest `keep_last`.

    `scaler` is fp16's gradient scaler, if any: its scale is learned from overflows, so a resume
    without it would start again at 65536 and skip steps the uninterrupted run did not."""
    step = loop_state["step"]
    final = root / f"{PREFIX}{step:06d}"
    partial = root / f".partial-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(trainable_tensors(model), partial / "trainable.safetensors")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), partial / "scaler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / "rng.pt")
    fault_point("checkpoint-write", step)
    write_json(partial / "state.json", {"loop": loop_state, "rng": _rng_state(), **meta})
    _fsync_tree(partial)
    if final.exists():  # the same step saved again (a resume that had nothing left to do)
        _discard(final)
    partial.rename(final)
    for old in checkpoints(root)[:-keep_last]:
        _discard(old.path)
    return final


def load(checkpoint: Checkpoint, model, optimizer, scaler=None) -> dict:
    """Restore weights, optimizer, fp16 gradient scaler and RNG; returns state.json's content."""
    tensors = load_file(checkpoint.path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [name for name in tensors if name not in params]
    if missing:
        raise SftlabError(f"{checkpoint.path}: does not fit this model (no parameter {missing[0]})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(checkpoint.path / "optimizer.pt", weights_only=True))
    scaler_file = checkpoint.path / "scaler.pt"
    if scaler is not None and scaler_file.exists():
        scaler.load_state_dict(torch.load(scaler_file, weights_only=True))
    state = checkpoint.state()
    _set_rng_state(state["rng"], torch.load(checkpoint.path / "rng.pt", weights_only=True))
    return state


def clear_partials(root: Path) -> None:
    """Remove leftovers of a checkpoint write or delete that a crash interrupted."""
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith((".partial-", ".discard-")):
                shutil.rmtree(entry, ignore_errors=True)


def fault_active(name: str, step: int) -> bool:
    """Test seam: SFTLAB_FAULT=<name>:<step>[,...] marks places where tests inject a fault."""
    wanted = os.environ.get("SFTLAB_FAULT")
    return bool(wanted) and f"{name}:{step}" in wanted.split(",")


def fault_point(name: str, step: int) -> None:
    """Die right here, as a crash (power loss, OOM killer, preemption) would."""
    if fault_active(name, step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
