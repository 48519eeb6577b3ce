"""Resumable, verified downloads of production models from a Hugging Face compatible hub.

Only the set-up command downloads; Triton models never do. The hub's tree API
(``/api/models/<repo>/tree/<revision>``) gives each file's size and, for LFS files,
its sha256, so every file is verified. Interrupted downloads continue from their
``.part`` file with an HTTP Range request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streaming.model_store import FileEntry, Manifest, ModelStore, ModelStoreError, sha256_file

_CHUNK = 1 << 20
_TIMEOUT_S = 30


@dataclass(frozen=True)
class CatalogModel:
    use_case: str
    name: str
    repo: str
    revision: str
    include: tuple[str, ...]
    licence: str
    description: str
    gpu: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> CatalogModel:
        return cls(d["use_case"], d["name"], d["repo"], d.get("revision", "main"),
                   tuple(d["include"]), d.get("licence", "unknown"), d.get("description", ""),
                   d.get("gpu"))


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None


def load_catalog(path: Path | None = None) -> list[CatalogModel]:
    path = path or Path(__file__).with_name("catalog.json")
    return [CatalogModel.from_dict(d) for d in json.loads(path.read_text())["models"]]


def find_catalog_model(catalog: list[CatalogModel], use_case: str, name: str) -> CatalogModel:
    for m in catalog:
        if (m.use_case, m.name) == (use_case, name):
            return m
    names = ", ".join(m.name for m in catalog if m.use_case == use_case) or "none"
    raise ModelStoreError(
        f"no model {name!r} for use case {use_case!r} in the catalog (known: {names})"
    )


class Hub:
    """A Hugging Face compatible endpoint (``RTMEDIA_HF_ENDPOINT`` points it at a mirror)."""

    def __init__(self, endpoint: str, token: str | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.token = token

    def _request(self, url: str, headers: dict[str, str] | None = None):
        req = urllib.request.Request(url, headers=dict(headers or {}))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("User-Agent", "rtmedia-models/0.1")
        try:
            return urllib.request.urlopen(req, timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            hint = " (gated or private: set HF_TOKEN)" if exc.code in (401, 403) else ""
            raise ModelStoreError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelStoreError(
                f"cannot reach {self.endpoint} ({reason}); check the network, or point "
                "RTMEDIA_HF_ENDPOINT at a reachable mirror"
            ) from exc

    def list_files(self, repo: str, revision: str) -> list[RemoteFile]:
        quoted = urllib.parse.quote(revision, safe="")
        url: str | None = f"{self.endpoint}/api/models/{repo}/tree/{quoted}?recursive=true"
        files: list[RemoteFile] = []
        while url:
            with self._request(url) as resp:
                entries = json.loads(resp.read())
                url = _next_link(resp.headers.get("Link"))
            for e in entries:
                if e.get("type") != "file":
                    continue
                lfs = e.get("lfs") or {}
                sha = lfs.get("oid") or lfs.get("sha256")
                files.append(RemoteFile(e["path"], e.get("size"), sha))
        return files

    def file_url(self, repo: str, revision: str, path: str) -> str:
        return (f"{self.endpoint}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/"
                f"{urllib.parse.quote(path)}")

    def download(
        self,
        url: str,
        dest: Path,
        *,
        size: int | None = None,
        sha256: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Download ``url`` to ``dest`` resuming ``dest.part``; return the sha256."""
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        digest = hashlib.sha256()
        if have:
            with part.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    digest.update(block)
            if progress:
                progress(have)
        if size is None or have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._request(url, headers) as resp:
                if have and resp.status != 206:  # server ignored Range: start over
                    have = 0
                    digest = hashlib.sha256()
                    part.unlink()
                    if progress:
                        progress(-1)
                with part.open("ab") as out:
                    while block := resp.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        if progress:
                            progress(len(block))
        got = digest.hexdigest()
        final_size = part.stat().st_size
        if size is not None and final_size != size:
            raise ModelStoreError(f"{url}: got {final_size} bytes, expected {size}; run again "
                                  "to resume")
        if sha256 and got != sha256:
            part.unlink()
            raise ModelStoreError(f"{url}: sha256 {got} != expected {sha256}; removed the "
                                  "download")
        part.rename(dest)
        return got


def _next_link(header: str | None) -> str | None:
    if not header:
        return None
    match = re.search(r'<([^>]+)>;\s*rel="next"', header)
    return match.group(1) if match else None


def select_files(files: list[RemoteFile], include: tuple[str, ...]) -> list[RemoteFile]:
    return [f for f in files if any(fnmatch.fnmatch(f.path, pat) for pat in include)]


def download_model(
    store: ModelStore,
    model: CatalogModel,
    hub: Hub,
    *,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Download a catalog model into the store (resumable); return its folder."""
    from tqdm import tqdm

    store.setup()
    remote = select_files(hub.list_files(model.repo, model.revision), model.include)
    if not remote:
        raise ModelStoreError(
            f"{model.repo}@{model.revision} has no files matching {list(model.include)}"
        )
    staging = store.staging_dir(model.use_case, model.name)
    total = sum(f.size or 0 for f in remote)
    log(f"{model.use_case}/{model.name}: {len(remote)} files from {model.repo} "
        f"({total / 2**20:.1f} MiB) into {store.model_dir(model.use_case, model.name)}")
    entries = []
    with tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024,
              disable=not show_progress, desc=model.name) as bar:
        def advance(n: int) -> None:
            if n < 0:
                bar.reset(total=total or None)
            else:
                bar.update(n)

        for f in remote:
            dest = staging / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() and (f.size is None or dest.stat().st_size == f.size):
                sha = sha256_file(dest)
                if f.sha256 is None or sha == f.sha256:
                    bar.update(dest.stat().st_size)
                    entries.append(FileEntry(f.path, dest.stat().st_size, sha))
                    continue
                dest.unlink()
            url = hub.file_url(model.repo, model.revision, f.path)
            sha = hub.download(url, dest, size=f.size, sha256=f.sha256, progress=advance)
            entries.append(FileEntry(f.path, dest.stat().st_size, sha))
    source = {"type": "huggingface", "repo": model.repo, "revision": model.revision,
              "endpoint": hub.endpoint, "verified_sha256": all(f.sha256 for f in remote)}
    manifest = Manifest(model.name, model.use_case, entries, source, model.licence,
                        model.description, time.time())
    return store.commit(staging, manifest)
