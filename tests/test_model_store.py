"""The model store: layout, manifests, verification, the CLI, and the default weights."""

from __future__ import annotations

import json

import pytest

from streaming.cli import main as cli
from streaming.default_models import DEFAULT_MODELS
from streaming.model_store import ModelStore, ModelStoreError, sha256_file
from streaming.settings import USE_CASES


def test_setup_is_idempotent(tmp_path):
    store = ModelStore(tmp_path / "store")
    assert len(store.setup()) == len(USE_CASES)
    assert store.setup() == []
    assert sorted(p.name for p in store.root.iterdir()) == sorted(USE_CASES)


def test_setup_in_unwritable_place_says_what_to_do(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelStoreError, match="AI_MODELS_DIR"):
        ModelStore(blocker / "store").setup()
    assert cli(["models", "setup", "--models-dir", str(blocker / "store")]) == 2
    assert "AI_MODELS_DIR" in capsys.readouterr().err


def test_unknown_use_case_and_bad_names(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="unknown use case"):
        store.model_dir("music", "x")
    with pytest.raises(ModelStoreError, match="invalid model name"):
        store.model_dir("stt", "../etc")


def test_defaults_installed_with_pinned_hashes(model_store):
    for model in DEFAULT_MODELS:
        manifest = model_store.manifest(model.use_case, model.name)
        assert manifest is not None, model.name
        recorded = {f.path: f.sha256 for f in manifest.files}
        assert {k: recorded.get(k) for k in model.sha256} == model.sha256
        assert manifest.source["type"] == "pypi"
        for entry in manifest.files:
            path = model_store.model_dir(model.use_case, model.name) / entry.path
            assert path.stat().st_size == entry.size > 0
    # whisper-base is joined from two wheels: the joined file matches the pinned hash
    base = model_store.model_dir("stt", "whisper-base") / "model.bin"
    assert sha256_file(base) == DEFAULT_MODELS[1].sha256["model.bin"]


def test_install_defaults_again_is_a_no_op(model_store, capsys):
    assert cli(["models", "install-defaults", "--models-dir", str(model_store.root),
                "--only", "agent/smollm2-135m"]) == 0
    assert "already installed agent/smollm2-135m" in capsys.readouterr().out


def test_verify_detects_corruption_and_remove(model_store, tmp_path, capsys):
    # Work on a copy so the shared store stays intact.
    import shutil

    store = ModelStore(tmp_path / "copy")
    store.setup()
    shutil.copytree(model_store.model_dir("stt", "silero-vad"),
                    store.model_dir("stt", "silero-vad"))
    assert store.verify("stt", "silero-vad").ok
    onnx = store.model_dir("stt", "silero-vad") / "silero_vad.onnx"
    data = bytearray(onnx.read_bytes())
    data[1000] ^= 0xFF
    onnx.write_bytes(bytes(data))
    result = store.verify("stt", "silero-vad")
    assert not result.ok and "sha256 mismatch" in result.problems[0]
    assert cli(["models", "verify", "--models-dir", str(store.root)]) == 1
    assert "FAILED" in capsys.readouterr().out
    onnx.unlink()
    assert "missing silero_vad.onnx" in store.verify("stt", "silero-vad").problems
    assert cli(["models", "remove", "stt", "silero-vad", "--models-dir", str(store.root)]) == 0
    assert not store.is_installed("stt", "silero-vad")
    assert cli(["models", "remove", "stt", "silero-vad", "--models-dir", str(store.root)]) == 2


def test_list_shows_models(model_store, capsys):
    assert cli(["models", "list", "--models-dir", str(model_store.root),
                "--http-port", "1"]) == 0
    out = capsys.readouterr().out
    assert "whisper-tiny.en" in out and "smollm2-135m" in out and "ok" in out
    assert "triton down" in out


def test_manifest_is_json_with_licence(model_store):
    path = model_store.model_dir("tts", "piper-joe") / "manifest.json"
    data = json.loads(path.read_text())
    assert data["licence"] and data["use_case"] == "tts" and data["files"]
