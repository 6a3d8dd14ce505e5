"""The store's records: immutable for the type checker, plain slotted objects at run time."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hookd.api.auth import Principal
from hookd.delivery.sender import AttemptResult
from hookd.store import records
from hookd.store.queries import Statement

# Every dataclass the store module exports, and the records built per request elsewhere.
RECORDS = [
    *(
        getattr(records, name)
        for name in records.__all__
        if dataclasses.is_dataclass(getattr(records, name))
    ),
    Principal,
    AttemptResult,
    Statement,
]
assert len(RECORDS) >= 11


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_records_are_slotted_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert "__slots__" in cls.__dict__
    assert "__dict__" not in cls.__dict__  # no per-instance dict: slots only


def test_mypy_rejects_assigning_to_a_record_field(tmp_path: Path) -> None:
    """The records are not frozen at run time (a frozen dataclass is slower to build), so
    the type checker is what keeps them immutable: an assignment must be an error."""
    snippet = tmp_path / "assign.py"
    snippet.write_text(
        "from hookd.store.records import Organization, Webhook\n"
        "from hookd.store.queries import Statement\n"
        "def change(w: Webhook, o: Organization, s: Statement) -> None:\n"
        "    w.name = 'renamed'\n"
        "    o.webhook_limit = 5\n"
        "    s.name = 'other'\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, out.stdout + out.stderr
    assert all("read-only" in line for line in errors), errors
