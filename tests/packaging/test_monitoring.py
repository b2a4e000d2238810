"""contrib/prometheus/alerts.yml and contrib/grafana/dashboard.json: valid for the tools that
read them (Debian's promtool), each alert shown firing by its unit tests, and every metric
and label they use one the bridge really exports (its prometheus-client registry)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from bridge import metrics

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "contrib/prometheus/alerts.yml"
ALERTS_TEST = REPO / "contrib/prometheus/alerts_test.yml"
DASHBOARD = REPO / "contrib/grafana/dashboard.json"
# What the issue asks the alerts to cover, by the rule that does.
REQUIRED_ALERTS = {"bridge down": "BridgeDown", "queue growing": "BridgeQueueGrowing",
                   "failed deliveries": "BridgeFailedDeliveries",
                   "a network unhealthy": "BridgeNetworkUnhealthy",
                   "mail bouncing": "BridgeMailBouncing"}
# Labels Prometheus adds to every scraped series, and the bucket label of histograms.
SCRAPE_LABELS = {"job", "instance"}
JOB = "matrix-hub-bridge"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    return path


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _exported() -> dict[str, set[str]]:
    """Every series name the bridge exports, with the labels it carries."""
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for family in metric.describe():
            names = {"counter": [f"{family.name}_total"], "gauge": [family.name],
                     "histogram": [f"{family.name}_{s}" for s in ("bucket", "sum", "count")],
                     }[family.type]
            for name in names:
                series[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return series


def test_promtool_accepts_the_alert_rules_and_they_cover_what_the_issue_asks() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    names = {rule["alert"] for rule in _rules()}
    assert set(REQUIRED_ALERTS.values()) <= names, REQUIRED_ALERTS
    for rule in _rules():  # every alert says what it is about and how bad
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f'job="{JOB}"' in rule["expr"], f"{rule['alert']}: only this job's series"


def test_promtool_unit_tests_show_every_alert_firing() -> None:
    result = subprocess.run([_promtool(), "test", "rules", ALERTS_TEST.name],
                            capture_output=True, text=True, timeout=60, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if not case["exp_alerts"]}
    every = {rule["alert"] for rule in _rules()}
    assert fired == every, f"no firing case for {every - fired}"
    # And cases where they keep quiet: pending, recovered, or below the threshold.
    assert quiet == every, f"no quiet case for {every - quiet}"


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names in its selector) for each series an expression reads."""
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, selector = match.group(1), match.group(2) or ""
        if name.startswith("bridge_") or name == "up":
            found.append((name, set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))))
    return found


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_series_and_label_used_is_one_the_bridge_exports(source: str) -> None:
    exprs = ([rule["expr"] for rule in _rules()] if source == "alerts"
             else _dashboard_exprs())
    exported = _exported()
    used = set()
    for expr in exprs:
        for name, labels in _selectors(expr):
            used.add(name)
            if name == "up":  # Prometheus's own, one per scraped target
                assert labels <= SCRAPE_LABELS, expr
                continue
            assert name in exported, f"{name} is not exported by bridge/metrics.py ({expr})"
            assert labels <= exported[name] | SCRAPE_LABELS, (
                f"{name} has no label {labels - exported[name] - SCRAPE_LABELS}: {expr}")
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            known = set().union(*(exported.get(n, set()) for n, _ in _selectors(expr)))
            assert labels <= known | SCRAPE_LABELS, f"by ({grouping}) in {expr}"
    assert used, "no series found: the expression parser is broken"
    if source == "dashboard":  # the dashboard shows every metric the bridge exports
        families = {name.removesuffix("_total").removesuffix("_bucket")
                    for name in used if name.startswith("bridge_")}
        bare = {name.removesuffix("_total") for name in exported
                if not name.endswith(("_sum", "_count"))}
        assert {n.removesuffix("_bucket") for n in bare} <= families, bare - families


def test_the_dashboard_is_a_grafana_dashboard_whose_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable in variables | {"__rate_interval"}, target["expr"]

    # promtool parses PromQL in rule files: every query becomes a recording rule, with
    # Grafana's variables as the values they take.
    rules = [{"record": f"dashboard:query{n}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for n, expr in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
