"""The centralized model store: ``$AI_MODELS_DIR/<use-case>/<model>/`` + ``manifest.json``.

Triton models find their weights here (never on a hub at run time). Every model
folder carries a manifest listing its files with size and sha256, where they came
from and under which licence, so ``verify`` can prove a folder is intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streaming.settings import USE_CASES

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class ModelStoreError(RuntimeError):
    """A model-store operation failed; the message says what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    name: str
    use_case: str
    files: list[FileEntry]
    source: dict = field(default_factory=dict)
    licence: str = "unknown"
    description: str = ""
    installed_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        data = {
            "name": self.name,
            "use_case": self.use_case,
            "description": self.description,
            "licence": self.licence,
            "source": self.source,
            "installed_at": self.installed_at,
            "files": [f.__dict__ for f in self.files],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_path(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        return cls(
            name=data["name"],
            use_case=data["use_case"],
            files=[FileEntry(**f) for f in data["files"]],
            source=data.get("source", {}),
            licence=data.get("licence", "unknown"),
            description=data.get("description", ""),
            installed_at=data.get("installed_at", 0.0),
        )

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class VerifyResult:
    use_case: str
    name: str
    ok: bool
    problems: list[str]


class ModelStore:
    """One store folder; all paths below it are ``<use_case>/<model>/``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- layout ---------------------------------------------------------------
    def setup(self) -> list[Path]:
        """Create the per-use-case folders (idempotent); return the ones created."""
        created = []
        try:
            for use_case in USE_CASES:
                folder = self.root / use_case
                if not folder.is_dir():
                    folder.mkdir(parents=True, exist_ok=True)
                    created.append(folder)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:  # permission denied, read-only FS, a file in the way ...
            raise ModelStoreError(
                f"cannot write to the model store {self.root}: {exc.strerror}. "
                "Choose a writable folder with AI_MODELS_DIR=/path/to/models "
                f"(or create it once: sudo mkdir -p {self.root} && sudo chown $USER {self.root})."
            ) from exc
        return created

    def check_use_case(self, use_case: str) -> None:
        if use_case not in USE_CASES:
            raise ModelStoreError(
                f"unknown use case {use_case!r}; expected one of: {', '.join(USE_CASES)}"
            )

    def model_dir(self, use_case: str, name: str) -> Path:
        self.check_use_case(use_case)
        if not name or "/" in name or name.startswith("."):
            raise ModelStoreError(f"invalid model name {name!r}")
        return self.root / use_case / name

    def manifest(self, use_case: str, name: str) -> Manifest | None:
        path = self.model_dir(use_case, name) / MANIFEST
        return Manifest.from_path(path) if path.is_file() else None

    def is_installed(self, use_case: str, name: str) -> bool:
        return self.manifest(use_case, name) is not None

    def manifests(self) -> Iterator[Manifest]:
        for use_case in USE_CASES:
            folder = self.root / use_case
            if not folder.is_dir():
                continue
            for model in sorted(folder.iterdir()):
                if (model / MANIFEST).is_file():
                    yield Manifest.from_path(model / MANIFEST)

    # -- writing ----------------------------------------------------------------
    def staging_dir(self, use_case: str, name: str) -> Path:
        """A sibling folder to build a model in, renamed into place when complete."""
        final = self.model_dir(use_case, name)
        staging = final.parent / f".{name}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self, staging: Path, manifest: Manifest) -> Path:
        """Write the manifest and move ``staging`` into place atomically."""
        (staging / MANIFEST).write_text(manifest.to_json())
        final = self.model_dir(manifest.use_case, manifest.name)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return final

    @staticmethod
    def describe_files(folder: Path) -> list[FileEntry]:
        entries = []
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != MANIFEST:
                rel = path.relative_to(folder).as_posix()
                entries.append(FileEntry(rel, path.stat().st_size, sha256_file(path)))
        return entries

    def remove(self, use_case: str, name: str) -> None:
        folder = self.model_dir(use_case, name)
        if not folder.exists():
            raise ModelStoreError(f"{use_case}/{name} is not in the store {self.root}")
        shutil.rmtree(folder)

    # -- checking ---------------------------------------------------------------
    def verify(self, use_case: str, name: str, *, full: bool = True) -> VerifyResult:
        """Check every file of a model against its manifest (sha256 unless ``full=False``)."""
        folder = self.model_dir(use_case, name)
        manifest = self.manifest(use_case, name)
        if manifest is None:
            return VerifyResult(use_case, name, False, [f"no {MANIFEST} in {folder}"])
        problems = []
        for entry in manifest.files:
            path = folder / entry.path
            if not path.is_file():
                problems.append(f"missing {entry.path}")
            elif path.stat().st_size != entry.size:
                problems.append(f"{entry.path}: size {path.stat().st_size} != {entry.size}")
            elif full and sha256_file(path) != entry.sha256:
                problems.append(f"{entry.path}: sha256 mismatch")
        return VerifyResult(use_case, name, not problems, problems)

    def verify_all(self, *, full: bool = True) -> list[VerifyResult]:
        return [self.verify(m.use_case, m.name, full=full) for m in self.manifests()]


def human_size(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GiB"
