"""Catalog downloads against a real local HTTP server that speaks the hub's API."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from streaming.cli import main as cli
from streaming.downloads import CatalogModel, Hub, download_model, load_catalog
from streaming.model_store import ModelStore, ModelStoreError
from streaming.settings import USE_CASES


class FakeHub(ThreadingHTTPServer):
    """A Hugging Face compatible file server: tree API (paginated) and resolve with Range."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files = files
        self.sha_override: dict[str, str] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before dropping, once
        self.range_requests: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        parts = unquote(url.path).strip("/").split("/")
        if parts[:2] == ["api", "models"]:  # /api/models/<org>/<repo>/tree/<rev>
            page = 1 if "page=2" in url.query else 0
            entries = [{"type": "directory", "path": "sub"}]
            for path, data in sorted(self.server.files.items()):
                sha = self.server.sha_override.get(path, hashlib.sha256(data).hexdigest())
                entries.append({"type": "file", "path": path, "size": len(data),
                                "lfs": {"oid": sha, "size": len(data)}})
            half = len(entries) // 2
            body = json.dumps(entries[:half] if page == 0 else entries[half:]).encode()
            self.send_response(200)
            if page == 0:
                self.send_header("Link", f'<{self.server.url}{url.path}?recursive=true&'
                                         'page=2>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # /<org>/<repo>/resolve/<rev>/<path...>
        path = "/".join(parts[4:])
        data = self.server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            self.server.range_requests.append(f"{path}:{rng}")
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if (cut := self.server.cut_once.pop(path, None)) is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-file
            return
        self.wfile.write(body)


@pytest.fixture
def hub():
    files = {
        "model.bin": bytes(range(256)) * 4096,  # 1 MiB
        "config.json": b'{"layers": 2}',
        "sub/extra.txt": b"not wanted",
    }
    server = FakeHub(files)
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


MODEL = CatalogModel("avatar", "wav2lip", "org/wav2lip", "main",
                     ("model.bin", "*.json"), "test", "test model")


def test_download_verifies_and_writes_manifest(hub, tmp_path):
    store = ModelStore(tmp_path)
    folder = download_model(store, MODEL, Hub(hub.url), show_progress=False,
                            log=lambda _m: None)
    assert (folder / "model.bin").read_bytes() == hub.files["model.bin"]
    assert not (folder / "sub").exists()  # not in include
    manifest = store.manifest("avatar", "wav2lip")
    assert {f.path for f in manifest.files} == {"model.bin", "config.json"}
    assert manifest.source["verified_sha256"] is True
    assert store.verify("avatar", "wav2lip").ok


def test_interrupted_download_resumes_with_range(hub, tmp_path):
    store = ModelStore(tmp_path)
    hub.cut_once["model.bin"] = 300_000
    with pytest.raises((ModelStoreError, OSError)):
        download_model(store, MODEL, Hub(hub.url), show_progress=False, log=lambda _m: None)
    part = store.root / "avatar" / ".wav2lip.partial" / "model.bin.part"
    assert part.stat().st_size == 300_000
    download_model(store, MODEL, Hub(hub.url), show_progress=False, log=lambda _m: None)
    assert hub.range_requests == ["model.bin:bytes=300000-"]
    assert store.verify("avatar", "wav2lip").ok


def test_sha_mismatch_is_refused(hub, tmp_path):
    hub.sha_override["model.bin"] = "0" * 64
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="sha256"):
        download_model(store, MODEL, Hub(hub.url), show_progress=False, log=lambda _m: None)
    assert not store.is_installed("avatar", "wav2lip")
    assert not list((store.root / "avatar").rglob("*.part"))


def test_unreachable_hub_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RTMEDIA_HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code = cli(["models", "download-use-case", "stt", "whisper-large-v3",
                "--models-dir", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "RTMEDIA_HF_ENDPOINT" in err


def test_cli_download_with_catalog_and_progress(hub, tmp_path, monkeypatch, capsys):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": [{
        "use_case": "avatar", "name": "wav2lip", "repo": "org/wav2lip",
        "include": ["model.bin"], "licence": "test"}]}))
    monkeypatch.setenv("RTMEDIA_HF_ENDPOINT", hub.url)
    store = tmp_path / "store"
    assert cli(["models", "download-use-case", "avatar", "wav2lip", "--catalog", str(catalog),
                "--models-dir", str(store)]) == 0
    captured = capsys.readouterr()
    assert "installed avatar/wav2lip" in captured.out
    assert "1.00M" in captured.err  # tqdm progress bar reached the full size
    assert cli(["models", "download-use-case", "avatar", "nope", "--catalog", str(catalog),
                "--models-dir", str(store)]) == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_packaged_catalog_covers_every_use_case():
    catalog = load_catalog()
    assert {m.use_case for m in catalog} == set(USE_CASES)
    names = [(m.use_case, m.name) for m in catalog]
    assert len(names) == len(set(names))
    assert ("stt", "whisper-large-v3") in names and ("avatar", "wav2lip") in names
