"""Wav2Lip: the real network and checkpoint format, with a checkpoint the test writes."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the optional [wav2lip] extra")

from pipelines.avatar import Avatar  # noqa: E402
from pipelines.triton_client import TritonClient  # noqa: E402
from pipelines.wav2lip import (  # noqa: E402
    Wav2Lip,
    Wav2LipRenderer,
    load_checkpoint,
    mel_windows,
    melspectrogram,
)
from streaming.model_store import ModelStore  # noqa: E402
from streaming.triton_server import TritonServer  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def write_checkpoint(path, *, seed: int = 0) -> None:
    """A generator checkpoint in the published layout: DataParallel keys + optimizer."""
    torch.manual_seed(seed)
    model = Wav2Lip()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.save({"state_dict": state, "optimizer": opt.state_dict(), "global_step": 10,
                "global_epoch": 1}, path)


@pytest.mark.triton  # real tier: builds and runs the full-size network (~7 s)
def test_checkpoint_format_loads_and_wrong_ones_are_refused(tmp_path):
    good = tmp_path / "wav2lip_gan.pth"
    write_checkpoint(good)
    model = load_checkpoint(good)
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 80, 16), torch.zeros(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96) and 0 <= float(out.min()) <= float(out.max()) <= 1
    bad = tmp_path / "syncnet.pth"
    torch.save({"state_dict": {"module.face_encoder.0.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="does not match the Wav2Lip generator"):
        load_checkpoint(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a Wav2Lip checkpoint"):
        load_checkpoint(junk)


def test_mel_features_match_the_original_layout():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = melspectrogram(tone)
    assert mel.shape == (80, 81)  # 80 mel bands, hop 200 at 16 kHz, centred
    assert mel.min() >= -4 and mel.max() <= 4
    band = int(np.argmax(mel[:, 40]))
    assert 5 <= band <= 25  # 440 Hz lands in the low bands
    silent = melspectrogram(np.zeros(16000, np.float32))
    assert np.allclose(silent, -4.0)
    windows = mel_windows(mel, 25)
    assert windows.shape == (25, 80, 16)


@pytest.mark.triton  # real tier: full-size network on the real avatar
def test_renderer_redraws_only_the_face(model_store, tmp_path):
    ckpt = tmp_path / "w.pth"
    write_checkpoint(ckpt)
    avatar = Avatar.load(model_store.model_dir("avatar", "astronaut"))
    renderer = Wav2LipRenderer(ckpt, batch=8)
    audio = (np.sin(np.arange(8000) * 0.07) * 9000).astype(np.int16)  # 0.5 s at 16 kHz
    frames = list(renderer.render(avatar, audio, 16000, t0=0.0))
    assert len(frames) == 13
    x0, y0, x1, y1 = renderer._face_box(avatar)
    idle = avatar.frame(0.0)
    assert np.array_equal(frames[0][:y0], idle[:y0])  # above the face: untouched
    assert not np.array_equal(frames[0][y0:y1, x0:x1], idle[y0:y1, x0:x1])


@pytest.mark.triton
async def test_triton_avatar_model_uses_wav2lip_when_weights_are_present(
        model_store, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.setup()
    shutil.copytree(model_store.model_dir("avatar", "astronaut"),
                    store.model_dir("avatar", "astronaut"))
    (store.root / "avatar" / "wav2lip").mkdir()
    write_checkpoint(store.root / "avatar" / "wav2lip" / "wav2lip_gan.pth")
    from streaming.settings import Settings

    settings = Settings.from_env().replace(
        models_dir=store.root, state_dir=tmp_path / "state", triton_http_port=free_port(),
        triton_grpc_port=free_port(), triton_metrics_port=free_port())
    server = TritonServer(settings, models=["avatar"], log_path=tmp_path / "triton.log")
    await asyncio.to_thread(server.start, wait_s=180)
    client = TritonClient(server.grpc_url)
    try:
        audio = (np.sin(np.arange(12000) * 0.05) * 9000).astype(np.int16)
        frames = []
        async with client.stream() as s:
            async for r in s.infer("avatar", {"AUDIO": audio,
                                              "SAMPLE_RATE": np.array([24000], np.int32)}):
                frames.extend(r.outputs["FRAMES"])
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)
    assert len(frames) == 13  # 0.5 s at 25 fps
    avatar = Avatar.load(store.model_dir("avatar", "astronaut"))
    eye = avatar.ann.eyes[0]
    y, x = int(eye.cy), int(eye.cx)
    idle = avatar.frame(0.0)
    # the sprite renderer never touches the eyes outside blinks; Wav2Lip redraws the face
    assert not np.array_equal(frames[0][y - 4:y + 4, x - 4:x + 4], idle[y - 4:y + 4, x - 4:x + 4])
