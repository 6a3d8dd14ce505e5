"""A client generated from ``/openapi.json`` works, typed (issue: generated clients).

openapi-python-client (installed with the test extra; it runs offline) generates the package
``hookd_client`` from the document a live ``hookd serve --dev`` serves; ``mypy --strict``
checks the typed example flow of ``tests/client_example.py`` against it (one enum per
concept, no ``null`` where the server takes none, errors typed), and the example then runs
against the server and a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.processes import HookdProcesses
from tests.receiver import Receiver

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command[:2])} failed:\n{output[-6000:]}"
    return output


async def test_generated_client_runs_a_typed_flow(tmp_path: Path, receiver: Receiver) -> None:
    url = f"sqlite:///{tmp_path / 'hookd.db'}"
    with HookdProcesses(tmp_path / "logs") as procs:
        server = procs.start("serve", database_url=url, args=["--dev"])
        document = tmp_path / "openapi.json"
        async with httpx.AsyncClient() as http:
            document.write_bytes((await http.get(server.url("/openapi.json"))).content)
        (tmp_path / "config.yaml").write_text(
            "package_name_override: hookd_client\nproject_name_override: hookd-client\n"
        )
        # The generator formats its output with ruff, found on PATH: the venv's own.
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        generated = run(
            [
                str(BIN / "openapi-python-client"),
                "generate",
                "--path",
                str(document),
                "--config",
                "config.yaml",
                "--meta",
                "none",
                "--output-path",
                "hookd_client",
            ],
            tmp_path,
            env,
        )
        assert "Warning" not in generated, f"expected a document without warnings:\n{generated}"
        example = tmp_path / "client_example.py"
        example.write_text((HERE / "client_example.py").read_text())
        # Strict everywhere, but for the generator's own client.py template, whose
        # `__exit__(*args)` forwarding mypy refuses against httpx's signatures: that file
        # comes from openapi-python-client whatever the document says.
        (tmp_path / "mypy.ini").write_text(
            "[mypy]\nstrict = True\n\n[mypy-hookd_client.client]\ndisable_error_code = arg-type\n"
        )
        run(
            [
                str(BIN / "mypy"),
                "--no-incremental",
                "--config-file",
                "mypy.ini",
                "client_example.py",
                "hookd_client",
            ],
            tmp_path,
        )
        # In a thread: the receiver answers on this test's event loop meanwhile.
        output = await asyncio.to_thread(
            run,
            [sys.executable, "client_example.py"],
            tmp_path,
            {
                **os.environ,
                "HOOKD": server.base_url,
                "KEY": server.api_key(),
                "RECEIVER_URL": receiver.url("/client"),
                "PYTHONPATH": str(tmp_path),
            },
        )
        assert "client example: ok" in output, output
        # The receiver got the event, the retry and the test event.
        assert len(receiver.requests) >= 3, receiver.requests
        assert "Traceback" not in server.stderr(), server.describe()
