"""What a run directory holds, written and read back in one place.

RUN/
  config.yaml          resolved config (every default filled in)
  manifest.json        data/template/tokenizer hashes, versions, seed, device, precision
  mask_report.json     the pre-flight report        rejected.jsonl  rows set aside, with reasons
  metrics.jsonl        one line per step / eval     summary.json    the outcome
  chat_format.json     template (system prompt baked in), end-of-turn token
  tokenizer/           tokenizer files whose chat_template is exactly the trained one
  adapter/             LoRA weights (peft format)   or  model/  (full fine-tuning)
  merged/              with export.merged: a plain transformers model
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from sftlab.core.errors import SftlabError
from sftlab.core.io import read_json, write_json
from sftlab.model.load import ModelRef, load_model, load_tokenizer, resolve_model
from sftlab.model.vocab import grow_embeddings
from sftlab.template.render import ChatFormat, Renderer


def save_chat_format(run_dir: Path, fmt: ChatFormat) -> None:
    write_json(run_dir / "chat_format.json", dataclasses.asdict(fmt))


def load_chat_format(run_dir: Path) -> ChatFormat:
    return ChatFormat(**read_json(run_dir / "chat_format.json"))


def save_tokenizer(tokenizer, fmt: ChatFormat, folder: Path) -> None:
    tokenizer.chat_template = fmt.template
    tokenizer.save_pretrained(folder)


def stop_token_ids(tokenizer, fmt: ChatFormat) -> list[int]:
    """Generation stops on the end-of-turn token (and on EOS, where that differs)."""
    ids = [fmt.end_of_turn_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def save_trained(model, run_dir: Path, method: str) -> Path:
    target = run_dir / ("adapter" if method == "lora" else "model")
    if method == "lora":
        # Embeddings grown for added markers (model/vocab.py) are rebuilt the same way on reload
        # and their trained rows are saved as token-row deltas; peft would otherwise save both
        # full embedding matrices of a resized model (Gemma: 2 x 671 MB).
        model.save_pretrained(target, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(target, safe_serialization=True)
    return target


@dataclass
class LoadedRun:
    model: torch.nn.Module
    tokenizer: object
    fmt: ChatFormat
    renderer: Renderer
    manifest: dict

    @property
    def stop_ids(self) -> list[int]:
        return stop_token_ids(self.tokenizer, self.fmt)


def load_run(
    run_dir: str | Path, dtype: torch.dtype = torch.float32, merged: bool = True
) -> LoadedRun:
    """A trained run, ready to generate: base + adapter merged (or the full model)."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise SftlabError(f"{run_dir} is not a run directory (no manifest.json); train one first")
    manifest = read_json(run_dir / "manifest.json")
    fmt = load_chat_format(run_dir)
    tokenizer = load_tokenizer(ModelRef("run tokenizer", str(run_dir / "tokenizer"), True))
    trained = manifest["model"]
    # The permissions the run was trained with, so a run whose base needed them reloads
    permissions = {
        "allow_pickle": trained.get("allow_pickle", False),
        "trust_remote_code": trained.get("trust_remote_code", False),
    }
    if (run_dir / "model").is_dir():
        model = load_model(resolve_model(str(run_dir / "model")), dtype=dtype, **permissions)
    elif (run_dir / "adapter").is_dir():
        # `source` is absolute (older runs: the name, resolved against the run's folder)
        base_ref = resolve_model(
            trained.get("source") or trained["name"], permissions["allow_pickle"], run_dir
        )
        base = load_model(base_ref, dtype=dtype, **permissions)
        model = attach_adapter(base, run_dir, fmt, merged)
    else:
        raise SftlabError(f"{run_dir} holds no trained weights (adapter/ or model/)")
    model.eval()
    return LoadedRun(model, tokenizer, fmt, Renderer(tokenizer, fmt), manifest)


def attach_adapter(base, run_dir: Path, fmt: ChatFormat, merged: bool = True):
    """The run's adapter on a loaded base model (merged into its weights, or as a PeftModel)."""
    from peft import PeftModel

    grow_embeddings(base, fmt.added_token_ids)  # the rows the run started from
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    return model.merge_and_unload() if merged else model
