"""Where a relative path in a config points: the config's folder first, then the current one."""

from __future__ import annotations

from pathlib import Path


def candidates(path: str, base_dir: Path | None = None) -> list[Path]:
    given = Path(path).expanduser()
    if given.is_absolute():
        return [given]
    found = ([base_dir / given] if base_dir is not None else []) + [Path.cwd() / given]
    return list(dict.fromkeys(found))  # the config's folder may be the current one


def find(path: str, base_dir: Path | None = None) -> Path | None:
    return next((c for c in candidates(path, base_dir) if c.exists()), None)
