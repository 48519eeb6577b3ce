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


async def test_client_address_comes_from_trusted_proxies_only(tmp_path):
    """Behind nginx every request comes from nginx: the wrong-credential limit (30 a
    minute per address) would lock every client out together. From a trusted proxy
    (127.0.0.2 here) the client is the X-Forwarded-For address; from anyone else the
    header is ignored."""
    import aiohttp
    from multidict import CIMultiDict as h

    from streaming.forwarded import client_address, parse_networks

    nets = parse_networks(["127.0.0.2/32", "10.0.0.0/8"])
    assert client_address("127.0.0.2", h({"X-Forwarded-For": "198.51.100.7, 10.1.2.3"}),
                          nets) == "198.51.100.7"
    assert client_address("127.0.0.1", h({"X-Forwarded-For": "198.51.100.7"}), nets) is None
    assert client_address("127.0.0.2", h({"X-Real-IP": "198.51.100.8"}), nets) == \
        "198.51.100.8"
    assert client_address("127.0.0.2", h({"X-Forwarded-For": "junk"}), nets) is None

    wrong = {"Authorization": "Bearer sk-wrong-key"}

    async def status(local: str, forwarded_for: str) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                local_addr=(local, 0))) as http, http.get(
                s.http + "/v1/models", headers={**wrong, "X-Forwarded-For": forwarded_for}
        ) as r:
            return r.status

    async with serve(keyed_settings(tmp_path, trusted_proxies=("127.0.0.2/32",))) as s:
        # through the trusted proxy: one client's failures do not lock out another
        assert {await status("127.0.0.2", "198.51.100.7") for _ in range(30)} == {401}
        assert await status("127.0.0.2", "198.51.100.7") == 429
        assert await status("127.0.0.2", "203.0.113.9") == 401
        # an untrusted peer cannot pick its address: its failures are its own
        assert {await status("127.0.0.1", f"192.0.2.{i}") for i in range(30)} == {401}
        assert await status("127.0.0.1", "192.0.2.200") == 429


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


# -- compose and Kubernetes, offline ---------------------------------------------------------
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = ["compose.yaml", "compose.single.yaml", "compose.cpu.yaml"]
ENTRYPOINT_VARS = set(re.findall(r"\b(RTMEDIA_TRITON_\w+)\b",
                                 (DEPLOY / "triton-entrypoint.sh").read_text()))


def setting_names() -> set[str]:
    """Every RTMEDIA_* variable streaming/settings.py reads."""
    from streaming.settings import USE_CASES

    text = (ROOT / "streaming" / "settings.py").read_text()
    names = {"RTMEDIA_" + n for n in re.findall(r'_env\(\s*"([A-Z0-9_]+)"', text)}
    return names | {f"RTMEDIA_TRITON_URL_{uc.upper()}" for uc in USE_CASES}


def compose_schema() -> dict:
    """The Compose specification's JSON schema, as shipped in the docker-compose 1.29.2
    wheel from PyPI (fetched once into the wheel cache)."""
    import zipfile

    from streaming.default_models import fetch_wheel, wheel_cache

    wheel = fetch_wheel("docker-compose", "1.29.2", wheel_cache())
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def load_compose(name: str) -> dict:
    import yaml

    return yaml.safe_load((DEPLOY / name).read_text())


def rtmedia_args(command: list[str]) -> list[str]:
    assert command[0] == "rtmedia", command
    from streaming.cli import build_parser

    build_parser().parse_args(command[1:])  # a real command line of the CLI
    return command[1:]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.triton  # the real tier: the schema's wheel is fetched from PyPI once
def test_compose_files_match_the_schema_and_reference_what_exists():
    import jsonschema

    validator = jsonschema.Draft201909Validator(compose_schema())
    names = setting_names()
    targets = set(re.findall(r"(?m)^FROM \S+ AS (\w+)", (DEPLOY / "Dockerfile").read_text()))
    assert {"media", "triton", "allinone"} <= targets
    from streaming.triton_server import discover_models

    model_use_case = {m.name: m.use_case for m in discover_models()}
    for name in COMPOSE_FILES:
        compose = load_compose(name)
        errors = sorted(validator.iter_errors(compose), key=str)
        assert not errors, f"{name}: " + "; ".join(e.message for e in errors[:5])
        services = compose["services"]
        hosts = {alias: s for s_name, s in services.items()
                 for alias in [s_name, *((s.get("networks") or {}).get("default") or {})
                               .get("aliases", [])]}
        published = set()
        for s_name, service in services.items():
            where = f"{name}:{s_name}"
            build = service.get("build")
            if build:
                assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), where
                assert build["target"] in targets, where
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    path = (DEPLOY / source).resolve()
                    if path.name == "certs":  # made by nginx/make-cert.sh, never committed
                        assert (path.parent / "make-cert.sh").is_file()
                        assert "certs/" in (path.parent / ".gitignore").read_text()
                    else:
                        assert path.exists(), f"{where}: {source}"
            published |= {p.rsplit(":", 1)[0] for p in service.get("ports", [])}
            env = env_of(service)
            for var in env:
                if var.startswith("RTMEDIA_"):
                    assert var in names | ENTRYPOINT_VARS, f"{where}: {var}"
            if "RTMEDIA_TRITON_LOAD" in env:  # a Triton pool: its models are its use cases'
                use_cases = env["RTMEDIA_TRITON_USE_CASES"].split()
                for model in env["RTMEDIA_TRITON_LOAD"].split():
                    assert model_use_case.get(model) in use_cases, f"{where}: {model}"
            command = service.get("command")
            if isinstance(command, list) and command[0] == "rtmedia":
                args = rtmedia_args(command)
                if args[0] == "up" and "--triton-url" in args:
                    # every use case of the voice agent reaches a Triton that serves it
                    routes = {uc: args[args.index("--triton-url") + 1]
                              for uc in ("stt", "tts", "avatar", "agent")}
                    routes |= {k.removeprefix("RTMEDIA_TRITON_URL_").lower(): v
                               for k, v in env.items() if k.startswith("RTMEDIA_TRITON_URL_")}
                    for uc, url in routes.items():
                        host, port = url.split(":")
                        triton = services[host]
                        assert port == "8001", where
                        assert uc in env_of(triton)["RTMEDIA_TRITON_USE_CASES"].split(), \
                            f"{where}: {uc} -> {host}"
                    drain = float(env.get("RTMEDIA_DRAIN_GRACE_S", "30"))
                    assert float(service["stop_grace_period"].rstrip("s")) > drain, where
        # only HTTPS and TURN are public; Grafana on the loopback only
        assert published <= {"443", "3478", "49160-49200", "127.0.0.1:3000"}, published
        assert "443" in published
        # nginx's replicas are services (or their aliases) listening on that port
        upstream = (ROOT / "nginx" / "conf.d" / "upstream.conf").read_text()
        for host, port in re.findall(r"(?m)^\s*server ([\w.-]+):(\d+)", upstream):
            service = hosts[host]
            assert port in service["command"] or env_of(service).get("RTMEDIA_PORT") == port \
                or port == "8080", f"{name}: upstream {host}:{port}"
        # Prometheus scrapes services that exist, on the ports they serve metrics on
        import yaml

        prom_file = next((a.split("=", 1)[1].rsplit("/", 1)[1]
                          for a in services["prometheus"]["command"]
                          if a.startswith("--config.file=")), None) \
            if "prometheus" in services else None
        if prom_file:
            prom = yaml.safe_load((DEPLOY / "prometheus" / prom_file).read_text())
            for job in prom["scrape_configs"]:
                for static in job["static_configs"]:
                    for target in static["targets"]:
                        host, port = target.split(":")
                        service = hosts[host]
                        if job["job_name"] == "rtmedia":
                            assert env_of(service)["RTMEDIA_METRICS_PORT"] == port, target
                        else:
                            assert port == "8002" and "RTMEDIA_TRITON_USE_CASES" in \
                                env_of(service), target
            source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                                     "prometheus.yml").read_text())
            assert source["datasources"][0]["url"] == "http://prometheus:9090"
    # the schema is a real check: a typo fails
    broken = load_compose("compose.yaml")
    broken["services"]["redis"]["restart_policy"] = "always"
    assert list(validator.iter_errors(broken))


def kustomize() -> list[dict]:
    import yaml

    kubectl = need("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True,
                         text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_kustomize_renders_valid_manifests_whose_references_hold():
    import kubernetes_validate

    docs = kustomize()
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    bad = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)

    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert all(d["metadata"].get("namespace") == "rtmedia" for d in docs
               if d["kind"] != "Namespace")
    deployments = [d for d in docs if d["kind"] == "Deployment"]

    def pods(selector: dict) -> list[dict]:
        return [d for d in deployments if selector.items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]

    for svc in (d for d in docs if d["kind"] == "Service"):
        matched = pods(svc["spec"]["selector"])
        assert len(matched) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in matched[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (svc["metadata"]["name"], port)
    for rule in by[("Ingress", "rtmedia")]["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            svc = by[("Service", backend["name"])]
            assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    media = by[("Deployment", "media")]
    hpa = by[("HorizontalPodAutoscaler", "media")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "media"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "rtmedia_sessions_active"
    assert pods(by[("PodDisruptionBudget", "media")]["spec"]["selector"]["matchLabels"]) \
        == [media]
    # settings: names that exist, Triton routes to pools that serve the use case
    config = by[("ConfigMap", "rtmedia-media")]["data"]
    names = setting_names()
    assert {k for k in config if k.startswith("RTMEDIA_")} <= names
    pod = media["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"][0]["configMapRef"]["name"] == "rtmedia-media"
    assert {e["name"] for e in container["env"] if e["name"].startswith("RTMEDIA_")} <= names
    assert "rtmedia-secrets" in (DEPLOY / "k8s" / "kustomization.yaml").read_text()
    rtmedia_args(container["command"])
    pools = {d["metadata"]["name"]: {e["name"]: e.get("value") for e in
                                     d["spec"]["template"]["spec"]["containers"][0]["env"]}
             for d in deployments if d["metadata"]["name"].startswith("triton-")}
    routes = {uc: config["RTMEDIA_TRITON_URL"] for uc in ("stt", "tts", "avatar", "agent")}
    routes |= {k.removeprefix("RTMEDIA_TRITON_URL_").lower(): v for k, v in config.items()
               if k.startswith("RTMEDIA_TRITON_URL_")}
    for uc, url in routes.items():
        host = url.split(":")[0]
        assert uc in pools[host]["RTMEDIA_TRITON_USE_CASES"].split(), (uc, host)
    for name in pools:
        spec = by[("Deployment", name)]["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"]["rtmedia.io/gpu-pool"] == name.removeprefix("triton-")
        assert "unload" in " ".join(spec["containers"][0]["lifecycle"]["preStop"]["exec"]
                                    ["command"])
    # the drain fits in the grace period, after the preStop pause
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["RTMEDIA_DRAIN_GRACE_S"])
    # the model store: one claim, filled by a Job running a real CLI command
    claims = {v["persistentVolumeClaim"]["claimName"]
              for d in [*deployments, by[("Job", "models-install")]]
              for v in d["spec"]["template"]["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v}
    assert claims == {"model-store"} and ("PersistentVolumeClaim", "model-store") in by
    job = by[("Job", "models-install")]["spec"]["template"]["spec"]["containers"][0]
    assert rtmedia_args(job["command"])[:2] == ["models", "install-defaults"]


@pytest.mark.triton
def test_triton_image_entrypoint_serves_its_pool(model_store, tmp_path):
    """deploy/triton-entrypoint.sh (the Triton image's entrypoint) run here with the
    tritonserver of the nvidia-pytriton wheel: it renders the repositories and serves only
    its pool's use cases, with the models it was told to load."""
    import os
    import signal
    import sys

    from streaming.settings import Settings
    from streaming.triton_server import make_backend_dir, stub_environment, tritonserver_binary

    settings = Settings().replace(models_dir=model_store.root, state_dir=tmp_path)
    env = stub_environment(settings)
    env.update(PATH=os.pathsep.join([str(tritonserver_binary().parent),
                                     str(Path(sys.executable).parent), env["PATH"]]),
               RTMEDIA_TRITON_USE_CASES="tts", RTMEDIA_TRITON_LOAD="piper",
               RTMEDIA_PLACEMENT="cpu", RTMEDIA_TRITON_REPO=str(tmp_path / "repo"))
    http = free_port()
    with open(tmp_path / "triton.log", "wb") as log:
        proc = subprocess.Popen(
            [str(DEPLOY / "triton-entrypoint.sh"), f"--backend-directory="
             f"{make_backend_dir(tmp_path)}", "--http-address=127.0.0.1", f"--http-port={http}",
             "--grpc-address=127.0.0.1", f"--grpc-port={free_port()}",
             "--metrics-address=127.0.0.1", f"--metrics-port={free_port()}",
             "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
             "--cuda-memory-pool-byte-size=0:0"], env=env, stdout=log,
            stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{http}"
    try:
        wait_until(lambda: urllib.request.urlopen(base + "/v2/models/piper/ready",
                                                  timeout=2).status == 200, 90, "piper ready")
        index = urllib.request.Request(base + "/v2/repository/index", data=b"{}")
        with urllib.request.urlopen(index, timeout=5) as r:
            models = {m["name"] for m in json.loads(r.read())}
        assert "piper" in models and not models & {"whisper", "llm", "avatar"}, models
        # exec'd: the same process, with the media server's keepalive accepted
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert Path(argv[0]).name == "tritonserver"
        assert "--grpc-keepalive-permit-without-calls=1" in argv
        assert f"--model-repository={tmp_path / 'repo' / 'tts'}" in argv
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
    log = (tmp_path / "triton.log").read_text(errors="replace")
    assert "tritonserver: tts (placement cpu; loading piper)" in log
