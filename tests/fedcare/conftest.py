"""Fixtures for the CLI's tests."""

from __future__ import annotations

import pytest
from rich.console import Console

from fedcare import budget_cli

WIDE = 400  # columns: wider than any message the tests print, so a line break is one the message made


@pytest.fixture
def wide_budget_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fedcare budget`'s consoles at a fixed width. They take their width when fedcare.budget_cli is
    imported, from $COLUMNS if it is set then (pytest-xdist sets 80 in its workers): CliRunner's COLUMNS
    comes too late, and a test that counts lines would count rich's wrapping."""
    monkeypatch.setattr(budget_cli, "console", Console(width=WIDE))
    monkeypatch.setattr(budget_cli, "errors", Console(stderr=True, width=WIDE))
