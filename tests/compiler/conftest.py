"""Fixtures for compiler tests: a gateway directory written from a dict of file texts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

WriteGateway = Callable[..., Path]


@pytest.fixture
def write_gateway(tmp_path: Path) -> WriteGateway:
    """``write_gateway({"gateway.yaml": ..., "policies/a.cedar": ...})`` -> the directory."""

    def write(files: dict[str, str | bytes], root: Path = tmp_path / "gw") -> Path:
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        return root

    return write
