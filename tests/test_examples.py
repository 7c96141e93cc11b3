"""Every shipped example config is valid and its data loads: a new user's first command works."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.config import load_config
from sftlab.data.mixture import load_source

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid_and_its_data_loads(path):
    config = load_config(path)
    for source in config.data.sources:
        data = load_source(source, base_dir=path.parent)
        assert data.conversations and not data.rejected
        assert len(data.conversations) >= (source.rows or 0)
