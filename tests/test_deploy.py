"""Deployment: the drain on SIGTERM (unit tier: a real media server on loopback, Triton
at a closed port), and the deploy/ files validated offline (compose against the compose
schema, Kustomize rendered by kubectl and checked by kubernetes-validate, cross references
to the code: ports, RTMEDIA_* names, files)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import websockets

from bench.stack import free_port
from streaming.server import SESSIONS, drain
from tests.deploy_stack import AUTH, ROOT, need, voice_turn, wait_until
from tests.test_auth import KEY, keyed_settings, serve

AUTH_HEADERS = {"Authorization": "Bearer " + KEY}


async def _created(ws) -> dict:
    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert event["type"] == "session.created"
    return event


async def test_drain_refuses_new_sessions_and_lets_open_ones_finish(tmp_path):
    async with serve(keyed_settings(tmp_path)) as s:
        async with s.client.get(s.http + "/readyz") as r:
            assert r.status == 503  # no Triton here; the point is what changes below
            assert "draining" not in await r.json()
        async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS) as ws:
            await _created(ws)
            task = asyncio.create_task(drain(s.app, grace_s=30))
            await asyncio.sleep(0.2)
            async with s.client.get(s.http + "/readyz") as r:
                assert r.status == 503 and (await r.json())["draining"] is True
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS):
                    pass
            assert refused.value.response.status_code == 503
            async with s.client.post(s.http + "/v1/realtime/calls", data="v=0\r\nm=audio",
                                     headers=AUTH_HEADERS) as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "draining"
            # the open session still works
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Be brief."}}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert updated["type"] == "session.updated"
            assert not task.done()
        # the client hung up: the drain ends well before its grace period
        assert await asyncio.wait_for(task, 5) == 0
        assert not s.app[SESSIONS]


async def test_drain_grace_expires_with_a_shutdown_error(tmp_path):
    async with serve(keyed_settings(tmp_path)) as s:
        async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS) as ws:
            await _created(ws)
            assert await drain(s.app, grace_s=0.5) == 1
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert event["type"] == "error"
            assert event["error"]["code"] == "server_shutdown"


# -- Prometheus: config, alert rules and their unit tests, dashboards' PromQL --------------
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
# Metrics only a GPU produces: their expressions are checked for syntax by Prometheus
# here (a query that succeeds), never for data (this machine has no GPU).
GPU_ONLY = re.compile(r"^nv_gpu_")


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    done = subprocess.run([need("promtool"), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_config_and_rules_and_runs_the_rule_tests():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "9 rules found" in promtool("check", "rules", "alerts.yml")
    promtool("test", "rules", "alerts_test.yml")
    # every alert has a unit test
    alerts = set(re.findall(r"(?m)^      - alert: (\w+)", (PROMETHEUS_DIR / "alerts.yml")
                            .read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts_test.yml")
                            .read_text()))
    assert alerts == tested, alerts ^ tested


def panel_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["panels"]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            for target in panel["targets"]:
                out.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return out


def rule_queries() -> list[tuple[str, str]]:
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_grafana_provisioning_points_at_the_dashboards():
    import yaml

    grafana = ROOT / "deploy" / "grafana" / "provisioning"
    source = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((grafana / "dashboards" / "rtmedia.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert {p.stem for p in DASHBOARDS} == {"voice-turns", "models", "gpus", "system"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


class Prometheus:
    def __init__(self, folder: Path, rtmedia: list[str], triton: str):
        import yaml

        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        jobs["rtmedia"]["static_configs"] = [{"targets": rtmedia}]
        jobs["triton"]["static_configs"] = [{"targets": [triton],
                                             "labels": {"pool": "realtime"}}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", folder / "alerts.yml")
        self.log = open(folder / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [need("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def declared_metrics(replicas) -> set[str]:
    """Metric names the replicas' /metrics declare (``# TYPE``), samples or not."""
    declared = set()
    for r in replicas:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.metrics_port}/metrics") as page:
            for name, kind in re.findall(r"(?m)^# TYPE (\S+) (\S+)$", page.read().decode()):
                declared |= {name} | ({f"{name}_{s}" for s in ("bucket", "count", "sum")}
                                      if kind == "histogram" else set())
    return declared


@pytest.mark.triton
async def test_every_panel_and_rule_query_returns_data_from_a_live_stack(deploy_stack,
                                                                         tmp_path):
    """Prometheus scrapes the two replicas and the tritonserver; each dashboard panel's
    and alert rule's PromQL runs through its API and returns data, or (a rate or ratio
    over quiet counters) every metric it names exists. Only nv_gpu_* cannot exist here."""
    stack = deploy_stack
    one = stack.replicas[0]
    if not one.metric("rtmedia_turn_latency_seconds_count"):
        await voice_turn(one.ws)  # the turn-latency histograms exist after a turn
    async with websockets.connect(one.ws, additional_headers=AUTH) as ws:  # an error event
        await ws.send("not json")
        assert json.loads(await ws.recv())["type"] == "session.created"
        assert json.loads(await ws.recv())["type"] == "error"
    # what the replicas declare (# TYPE) exists even before its first sample (a labelled
    # histogram of heavy model loads, say)
    declared = await asyncio.to_thread(declared_metrics, stack.replicas)
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{r.metrics_port}"
                                                 for r in stack.replicas], stack.triton_metrics)
    try:
        await asyncio.to_thread(wait_until, lambda: len([
            t for t in prom.api("targets")["activeTargets"] if t["health"] == "up"]) == 3,
            30, "3 targets up")
        await asyncio.sleep(3)  # a few scrapes: rates need two samples
        names = set(prom.api("label/__name__/values"))
        problems, with_data, gpu_only = [], 0, []
        for where, expr in panel_queries() + rule_queries():
            query = expr.replace("$__rate_interval", "30s").replace("$__interval", "30s")
            result = prom.api("query", query=query)["result"]
            if result:
                with_data += 1
                continue
            named = set(re.findall(r"\b((?:rtmedia|nv)_\w+|up)\b", query))
            if named and all(GPU_ONLY.match(n) for n in named):
                gpu_only.append(where)
                continue
            missing = sorted(n for n in named if n not in names | declared
                             and not GPU_ONLY.match(n))
            if missing or not named:
                problems.append(f"{where}: {expr!r} has no data; missing {missing}")
        assert not problems, "\n".join(problems) + f"\nknown: {sorted(names)}"
        assert with_data >= 20, with_data
        assert gpu_only and all("gpu" in w.lower() for w in gpu_only), gpu_only
        rules = prom.api("rules")["groups"][0]["rules"]
        assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), rules
        firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
        assert not firing & {"TritonDown", "MediaServerDown", "RedisUnreachable"}, firing
    finally:
        prom.stop()
