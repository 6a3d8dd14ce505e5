"""The Grafana dashboard and the Prometheus alert rules in ``deploy/`` (SPEC §8): the rules
pass ``promtool check rules`` and their unit tests (``promtool test rules``), and both use
only metric names that hookd serves.

promtool comes from Debian's ``prometheus`` package (``scripts/test`` installs it); without
it these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import unavailable
from tests.processes import HookdProcesses

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hookd.json"
NAME = re.compile(r"\bhookd_[a-z_]+\b")


def promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not os.access(found, os.X_OK):
        problem = (
            "promtool is not installed (Debian's prometheus package; scripts/test installs it)"
        )
        unavailable(problem)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=RULES.parent, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_pass_promtool_check() -> None:
    result = run(promtool(), "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout, result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run(promtool(), "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def rule_expressions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_alerts_cover_lag_failure_rate_and_suspensions() -> None:
    expressions = rule_expressions()
    assert "hookd_delivery_lag_seconds" in expressions["HookdDeliveryLagHigh"]
    assert 'outcome!="success"' in expressions["HookdDeliveryFailureRateHigh"]
    assert "hookd_webhook_suspensions_total" in expressions["HookdWebhookSuspended"]


def test_dashboard_and_rules_use_only_metrics_hookd_serves(tmp_path: Path) -> None:
    with HookdProcesses(tmp_path, env={"HOOKD_LOG_LEVEL": "warning"}) as procs:
        server = procs.start("serve", database_url=f"sqlite:///{tmp_path / 'hookd.db'}")
        text = httpx.get(server.url("/metrics"), timeout=5).text
    types = dict(re.findall(r"^# TYPE (hookd_\w+) (\w+)$", text, re.MULTILINE))
    served = set(types)
    for family, kind in types.items():
        if kind == "histogram":
            served |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    used = {
        (where, name)
        for where, expressions in (
            ("alerts.yml", list(rule_expressions().values())),
            ("hookd.json", dashboard_expressions()),
        )
        for expression in expressions
        for name in NAME.findall(expression)
    }
    assert len(used) > 10
    unknown = sorted((where, name) for where, name in used if name not in served)
    assert unknown == [], f"names that hookd does not serve: {unknown}"
    dashboard_names = {name for where, name in used if where == "hookd.json"}
    wanted = {
        "hookd_events_published_total",
        "hookd_delivery_attempts_total",
        "hookd_delivery_attempt_duration_seconds_bucket",
        "hookd_delivery_lag_seconds",
        "hookd_deliveries",
        "hookd_webhook_suspensions_total",
    }
    assert wanted <= dashboard_names, f"the dashboard lacks {wanted - dashboard_names}"
