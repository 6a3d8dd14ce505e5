"""The README's shell examples run, in order, against a live ``hookd serve --dev``.

The convention, for everyone who edits the README: every fenced block whose language is a
shell (``bash``, ``sh``, ``shell``, ``console``) carries one marker word after the language:

- ```` ```bash run ````: executed by :func:`test_readme_examples_run`, in README order, all
  in one bash session (``set -euo pipefail``; variables set by one block are seen by the
  next), from a scratch directory holding a ``.venv`` link to the test's own environment. The
  block must exit 0 and print no error object (``"object":"error"``).
- ```` ```bash norun ````: shown, not executed, because it starts a server that runs until
  stopped, needs something the test does not have (a PostgreSQL database named ``hookd``), or
  takes minutes (benchmarks, the whole test suite).

A shell block without a marker fails :func:`test_every_shell_block_says_whether_it_runs`,
so a new section makes the choice explicitly.

The session sees what a reader's second terminal would, after ``scripts/serve --dev`` in the
first: ``HOOKD_PORT`` (the server's port), ``HOOKD_DATABASE_URL`` (its database, which the
README's ``.venv/bin/hookd`` commands find as ``hookd.db`` in the repository by default) and
``RECEIVER_PORT`` and ``LOCAL_PORT`` (free ports for the README's receivers; ``examples/`` is
linked into the scratch directory). Processes a block leaves running in
the background (the receiver) are stopped with the session's process group at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import HookdProcesses, free_port, hookd_env

README = Path(__file__).resolve().parent.parent / "README.md"
SHELLS = {"bash", "sh", "shell", "console"}
MARKERS = {"run", "norun"}
FENCE = re.compile(r"^```(\w*)([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
BLOCK_MARK = "@@readme-block@@"
TIMEOUT = 180


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    markers: tuple[str, ...]
    body: str


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(
            text.count("\n", 0, match.start()) + 1,
            match.group(1),
            tuple(match.group(2).split()),
            match.group(3),
        )
        for match in FENCE.finditer(text)
    ]


def shell_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.language in SHELLS]


def test_every_shell_block_says_whether_it_runs() -> None:
    blocks = shell_blocks()
    assert len(blocks) >= 10, "expected the README's shell examples"
    unmarked = [
        f"README.md:{b.line}: ```{b.language} {' '.join(b.markers)}"
        for b in blocks
        if len(set(b.markers) & MARKERS) != 1
    ]
    assert unmarked == [], (
        "every shell block needs `run` or `norun` after its language (see tests/test_readme.py):\n"
        + "\n".join(unmarked)
    )


def test_examples_use_no_unset_variables_or_placeholders() -> None:
    """Ids, cursors and keys come from earlier commands, never typed in by hand."""
    for block in shell_blocks():
        if "run" not in block.markers:
            continue
        # Comments (a whole line, or after a command) may show example output.
        code = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in block.body.splitlines())
        assert not re.search(r"\b[0-9a-f]{24}\b", code), f"README.md:{block.line}: a literal id"
        assert "..." not in code and "sk_" not in code, f"README.md:{block.line}: a placeholder"


def _script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for block in blocks:
        parts.append(f"echo '{BLOCK_MARK} {block.line}'")
        parts.append(block.body)
    parts.append(f"echo '{BLOCK_MARK} end'")
    return "\n".join(parts) + "\n"


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = [b for b in shell_blocks() if "run" in b.markers]
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "examples").symlink_to(README.parent / "examples")
    database = f"sqlite:///{tmp_path / 'hookd.db'}"
    with HookdProcesses(tmp_path / "logs") as procs:
        server = procs.start("serve", database_url=database, args=["--dev"])
        env = hookd_env(
            {
                "HOOKD_PORT": str(server.port),
                "RECEIVER_PORT": str(free_port()),
                "LOCAL_PORT": str(free_port()),
            },
            database_url=database,
        )
        output_path = tmp_path / "readme.out"
        with open(output_path, "wb") as output:
            session = subprocess.Popen(
                ["bash", "-c", _script(blocks)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = session.wait(TIMEOUT)
            finally:
                # The session's own process group: the receiver it started in the background.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(session.pid, signal.SIGTERM)
                if session.poll() is None:
                    session.kill()
                    session.wait()
        output = output_path.read_text(errors="replace")
        assert "Traceback" not in server.stderr(), server.describe()
    chunks = output.split(BLOCK_MARK)[1:]
    last = chunks[-1].split("\n", 1) if chunks else ["?", output]
    assert code == 0, f"the README block at line {last[0].strip()} failed:\n{last[-1][-4000:]}"
    assert chunks[-1].strip() == "end", output[-4000:]
    for chunk in chunks[:-1]:
        line, _, printed = chunk.partition("\n")
        assert '"object":"error"' not in printed, (
            f"README.md:{line.strip()} answered an error:\n{printed}"
        )
    assert "verified post.created notif_" in output, "expected the receiver to verify a delivery"
    assert "BAD SIGNATURE" not in output, output
    assert "delivery succeeded" in output, output


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.language == "json"], ids=str)
def test_json_examples_parse(block: Block) -> None:
    """The README's JSON examples are JSON (a fragment starting with a key is wrapped)."""
    import json

    text = block.body.strip()
    if text.startswith('"'):
        text = "{" + text.replace(", ...]", "]") + "}"
    json.loads(text)
