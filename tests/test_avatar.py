"""The avatar renderer, the default avatar and `rtmedia avatar prepare`."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.avatar import FPS, Avatar, energy_track, viseme_track
from streaming.cli import main as cli
from streaming.model_store import ModelStore


@pytest.fixture(scope="module")
def avatar(model_store) -> Avatar:
    return Avatar.load(model_store.model_dir("avatar", "astronaut"))


def test_mouth_opens_with_vowels_and_closes_on_m(avatar):
    x0, y0, x1, y1 = avatar.mouth_region()
    closed = avatar.frame(1.0, 0.0)[y0:y1, x0:x1].astype(int)
    wide = avatar.frame(1.0, 1.0)[y0:y1, x0:x1].astype(int)
    assert np.abs(wide - closed).mean() > 5
    track = viseme_track([["m", 0.0, 0.1], ["a", 0.1, 0.4], ["m", 0.4, 0.5]], 0.6)
    assert len(track) == int(0.6 * FPS)
    openness = [o for o, _ in track]
    assert openness[1] < 0.2 and max(openness[3:10]) > 0.8 and openness[-1] < openness[8]


def test_energy_drives_the_mouth_without_phonemes():
    rate = 16000
    audio = np.concatenate([np.zeros(rate // 2), 0.5 * np.sin(np.arange(rate // 2) * 0.2)])
    track = energy_track(audio.astype(np.float32), rate)
    assert max(o for o, _ in track[:10]) < 0.05 and min(o for o, _ in track[15:]) > 0.5


def test_idle_frames_blink_and_outside_the_face_nothing_moves_much(avatar):
    frames = [avatar.frame(i / FPS) for i in range(FPS * 8)]
    eye = avatar.ann.eyes[0]
    ys, xs = slice(int(eye.cy) - 2, int(eye.cy) + 2), slice(int(eye.cx) - 2, int(eye.cx) + 2)
    eye_means = [f[ys, xs].mean() for f in frames]
    assert max(eye_means) - min(eye_means) > 10  # the eye closed at least once


def test_rendering_is_real_time_on_a_cpu(avatar):
    t0 = time.perf_counter()
    for i in range(250):
        avatar.frame(i / FPS, (i % 8) / 7, i % 3)
    per_frame = (time.perf_counter() - t0) / 250
    assert per_frame < 0.02  # 25 fps needs < 40 ms; measured ~0.2 ms


def test_prepare_a_photo(model_store, tmp_path, capsys):
    pytest.importorskip("cv2", reason="the [avatar] extra (opencv) is not installed")
    photo = model_store.model_dir("avatar", "astronaut") / "source.png"
    store = tmp_path / "store"
    assert cli(["avatar", "prepare", str(photo), "--name", "me", "--models-dir",
                str(store)]) == 0
    made = Avatar.load(ModelStore(store).model_dir("avatar", "me"))
    assert made.portrait.shape == (256, 256, 3)
    face = made.ann.face
    assert 60 < face.w < 200 and 60 < face.cx < 200  # the face fills the portrait
    assert face.cy < made.ann.mouth.cy  # the mouth is below the face centre
    assert ModelStore(store).verify("avatar", "me").ok


def test_prepare_refuses_a_photo_without_a_face(tmp_path, capsys):
    pytest.importorskip("cv2", reason="the [avatar] extra (opencv) is not installed")
    import av

    noise = tmp_path / "noise.png"
    with av.open(str(noise), "w") as c:
        stream = c.add_stream("png")
        stream.width = stream.height = 200
        stream.pix_fmt = "rgb24"
        img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")),
                       *stream.encode()]:
            c.mux(packet)
    assert cli(["avatar", "prepare", str(noise), "--models-dir", str(tmp_path / "s")]) == 2
    assert "no face found" in capsys.readouterr().err
    assert cli(["avatar", "prepare", str(tmp_path / "missing.png"), "--models-dir",
                str(tmp_path / "s")]) == 2
