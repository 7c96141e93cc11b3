"""GGUF files are converted once into a cache folder keyed by their content (issue 11 item 8):
two fine-tunes quantised the same way have the same name and size, and must never share a cache.

The GGUF files are real: a tiny Llama (the conftest model's shape) with a byte-level BPE
tokenizer, written with the `gguf` package as llama.cpp's converter writes them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SPECIALS, _byte_unicode
from sftlab.model.load import cache_root, load_model, resolve_model

HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 32, 2, 64, 4, 2


def write_tiny_gguf(path: Path, seed: int) -> Path:
    """A tiny llama-architecture GGUF (fp32 tensors); `seed` only changes the weight values, so
    files written with different seeds have the same size."""
    import gguf

    tokens = [_byte_unicode()[b] for b in range(256)] + SPECIALS
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * len(SPECIALS))
    writer.add_token_scores([0.0] * len(tokens))  # no merges: every byte is its own token
    writer.add_eos_token_id(258)
    writer.add_pad_token_id(258)
    writer.add_unk_token_id(256)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.05)

    tensor("token_embd.weight", len(tokens), HIDDEN)
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (kv, HIDDEN)),
                            ("attn_v", (kv, HIDDEN)), ("attn_output", (HIDDEN, HIDDEN)),
                            ("ffn_gate", (FFN, HIDDEN)), ("ffn_up", (FFN, HIDDEN)),
                            ("ffn_down", (HIDDEN, FFN))):  # fmt: skip
            tensor(f"blk.{i}.{name}.weight", *shape)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def embedding(path: Path) -> torch.Tensor:
    """The token embedding as the GGUF file holds it, read with the gguf package directly."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    [embed] = [t for t in reader.tensors if t.name == "token_embd.weight"]
    return torch.from_numpy(np.array(embed.data)).reshape(-1, HIDDEN)


def loaded_embedding(name: str) -> torch.Tensor:
    return load_model(resolve_model(name)).get_input_embeddings().weight.detach()


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    return cache_root()


def test_same_name_and_size_different_content_never_share_a_cache(tmp_path, private_cache):
    first = write_tiny_gguf(tmp_path / "a" / "model.Q4.gguf", seed=1)
    second = write_tiny_gguf(tmp_path / "b" / "model.Q4.gguf", seed=2)
    assert first.stat().st_size == second.stat().st_size and first.name == second.name
    assert not torch.equal(embedding(first), embedding(second))
    assert torch.equal(loaded_embedding(str(first)), embedding(first))
    assert torch.equal(loaded_embedding(str(second)), embedding(second))
    assert resolve_model(str(first)).path != resolve_model(str(second)).path


def test_rewritten_file_is_converted_again(tmp_path, private_cache):
    path = write_tiny_gguf(tmp_path / "model.gguf", seed=1)
    assert torch.equal(loaded_embedding(str(path)), embedding(path))
    stat = path.stat()
    write_tiny_gguf(path, seed=2)  # same name, same size, new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime (cp -p)
    assert path.stat().st_size == stat.st_size
    assert torch.equal(loaded_embedding(str(path)), embedding(path))


def test_content_hash_is_recorded_and_reused_while_the_file_is_unchanged(tmp_path, private_cache):
    path = write_tiny_gguf(tmp_path / "model.gguf", seed=1)
    ref = resolve_model(str(path))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    source = json.loads((Path(ref.path) / "sftlab-source.json").read_text())
    assert source["sha256"] == sha256 and source["gguf"] == str(path.resolve())
    [record] = json.loads((private_cache / "models" / "gguf-sha256.json").read_text()).values()
    assert record["sha256"] == sha256 and record["size"] == path.stat().st_size
    # While (device, inode, size, mtime, ctime) are unchanged the recorded hash is trusted, not
    # recomputed: a planted one is used as is (and, matching no cache folder, converts anew).
    index = private_cache / "models" / "gguf-sha256.json"
    planted = {k: {**v, "sha256": "0" * 64} for k, v in json.loads(index.read_text()).items()}
    index.write_text(json.dumps(planted))
    assert resolve_model(str(path)).path != ref.path
