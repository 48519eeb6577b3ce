"""The avatar renderer, the default avatar and `rtmedia avatar prepare`."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pipelines.avatar import FPS, Avatar, energy_track, eyelid, viseme_track
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


# -- what a frame may change ---------------------------------------------------------------
def luma(img: np.ndarray) -> np.ndarray:
    return img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull's corners in order."""
    pts = sorted(map(tuple, points.tolist()))

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) -
                                     (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1], np.float32)


def inside_hull(hull: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Pixels within ``margin`` of the convex polygon ``hull``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    ok = np.ones(shape, bool)
    for (x0, y0), (x1, y1) in zip(hull, np.roll(hull, -1, axis=0), strict=True):
        ex, ey = x1 - x0, y1 - y0
        n = math.hypot(ex, ey) or 1.0
        # signed distance to the edge's line, positive inside (the monotone chain's
        # order with y pointing down)
        ok &= (ex * (yy - y0) - ey * (xx - x0)) / n >= -margin
    return ok


def mouth_defects(avatar: Avatar, frame: np.ndarray, openness: float, width: int = 1,
                  margin: float = 3.0, dark: float = 70.0) -> dict:
    """How the mouth area (nose to half way down the chin, cheek to cheek) of a frame
    departs from the photo: pixels turned dark (a mouth opening) outside the lips'
    convex hull, and how many turned dark inside it. (Below, the chin's own shadow
    moves down with the jaw.)"""
    hull = convex_hull(avatar.lip_outline(openness, width))
    new_dark = (luma(frame) < dark) & (luma(avatar.portrait) >= dark + 25)
    L = avatar.lips
    area = np.zeros_like(new_dark)
    area[int(L.top[1] - 2 * (L.split[1] - L.top[1])):
         int((L.bottom[1] + L.chin[1]) / 2 + avatar.drop(openness)),
         int(avatar.mid_x - 1.8 * avatar.half_w):int(avatar.mid_x + 1.8 * avatar.half_w)] = True
    new_dark &= area
    inside = inside_hull(hull, new_dark.shape, margin)
    return {"dark_inside": int((new_dark & inside).sum()),
            "dark_outside": int((new_dark & ~inside).sum())}


def border_diff(a: np.ndarray, b: np.ndarray, width: int = 8) -> float:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(max(d[:width].mean(), d[-width:].mean(), d[:, :width].mean(),
                     d[:, -width:].mean()))


def test_speaking_frames_open_only_the_mouth(avatar):
    """No second mouth and no pasted shapes: the mouth's dark opening lies inside the
    lips' convex hull, the photo's teeth stay, and outside the mouth-and-jaw area and
    the eyes the frame is the photo, border included."""
    assert avatar.portrait.shape[0] >= 384 and avatar.portrait.shape[1] >= 384
    t = 1.0
    assert eyelid(t) == 0
    L = avatar.lips
    hull0 = convex_hull(avatar.lip_outline(0.0))
    bright = (luma(avatar.portrait) > 170) & inside_hull(hull0, avatar.portrait.shape[:2], 0)
    yy, xx = np.mgrid[0:avatar.h, 0:avatar.w]
    teeth = bright & (yy < avatar.split_y(xx) - 1.5) & (np.abs(xx - avatar.mid_x) <
                                                        avatar.half_w * 0.6)
    assert teeth.sum() > 50  # the photo's smile shows its upper teeth
    x0, y0, x1, y1 = avatar.mouth_region()
    outside = np.ones(avatar.portrait.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    for openness in (0.3, 0.6, 1.0):
        for width in (0, 1, 2):
            frame = avatar.frame(t, openness, width)
            bad = mouth_defects(avatar, frame, openness, width)
            assert bad["dark_outside"] == 0, (openness, width, bad)
            if openness >= 0.6:  # the inside of the mouth shows
                assert bad["dark_inside"] > avatar.drop(openness) * avatar.half_w * 0.5, bad
            assert np.array_equal(frame[outside], avatar.portrait[outside])
            assert border_diff(frame, avatar.portrait) == 0
            if width == 1:
                moved = np.abs(luma(frame) - luma(avatar.portrait))[teeth]
                assert moved.mean() < 6, (openness, moved.mean())
    # the lower lip and chin really move down with the jaw
    col = slice(int(L.split[0]) - 3, int(L.split[0]) + 4)
    rows = slice(int(L.split[1]) + 2, int(L.chin[1]))
    assert np.abs(luma(avatar.frame(t, 1.0)[rows, col]) -
                  luma(avatar.portrait[rows, col])).mean() > 8


def test_the_frame_checks_catch_a_pasted_mouth_and_a_moved_border(avatar):
    """Negative control for the checks above (and the browser test): a dark oval pasted
    over the mouth, as the old sprite renderer did, and a frame rolled by a pixel."""
    frame = avatar.portrait.copy()
    yy, xx = np.mgrid[0:avatar.h, 0:avatar.w]
    cy = avatar.lips.split[1] + avatar.half_w * 0.1
    oval = ((xx - avatar.mid_x) / (avatar.half_w * 1.1)) ** 2 + \
        ((yy - cy) / (avatar.half_w * 0.45)) ** 2 < 1
    frame[oval] = (70, 22, 28)
    assert mouth_defects(avatar, frame, 1.0, 2)["dark_outside"] > 20
    rolled = np.roll(avatar.portrait, (1, 1), axis=(0, 1))
    assert border_diff(rolled, avatar.portrait) > 3


def test_blinks_close_the_eyelids(avatar):
    """A blink covers the eye with the lid's own skin (textured, not a flat patch) and
    changes nothing but the eyes."""
    t = next(i / FPS for i in range(FPS * 10) if eyelid(i / FPS) == 1.0)  # at 25 fps
    closed, open_ = avatar.frame(t), avatar.portrait
    x0, y0, x1, y1 = avatar.mouth_region()
    changed = np.any(closed != open_, axis=2)
    changed[y0:y1, x0:x1] = False
    for eye in avatar.ann.eyes:
        box = (slice(int(eye.cy - eye.h * 0.1), int(eye.cy + eye.h * 0.15)),
               slice(int(eye.cx - eye.w * 0.25), int(eye.cx + eye.w * 0.25)))
        iris_before, iris_after = luma(open_[box]).min(), luma(closed[box]).min()
        assert iris_after > iris_before + 25, (iris_before, iris_after)  # the iris is hidden
        lid = (slice(int(eye.cy - eye.h * 0.35), int(eye.cy)), box[1])
        assert luma(closed[lid]).std() > 2.0  # skin texture, not a flat fill
        ys, xs = np.nonzero(changed)
        near = (np.abs(xs - eye.cx) < eye.w) & (np.abs(ys - eye.cy) < eye.h)
        changed[ys[near], xs[near]] = False
    assert not changed.any(), "a blink changed pixels away from the eyes"
    assert border_diff(closed, open_) == 0


def test_rendering_is_real_time_on_a_cpu(avatar):
    t0 = time.perf_counter()
    for i in range(250):
        avatar.frame(i / FPS, (i % 8) / 7, i % 3)
    per_frame = (time.perf_counter() - t0) / 250
    # 25 fps needs < 40 ms; measured ~0.3 ms (first use of each warp ~4 ms, then cached)
    assert per_frame < 0.02


def test_prepare_a_photo(model_store, tmp_path, capsys):
    pytest.importorskip("cv2", reason="the [avatar] extra (opencv) is not installed")
    photo = model_store.model_dir("avatar", "astronaut") / "source.png"
    store = tmp_path / "store"
    assert cli(["avatar", "prepare", str(photo), "--name", "me", "--models-dir",
                str(store)]) == 0
    made = Avatar.load(ModelStore(store).model_dir("avatar", "me"))
    assert made.portrait.shape == (384, 384, 3)
    face = made.ann.face
    assert 90 < face.w < 300 and 90 < face.cx < 300  # the face fills the portrait
    # the lips found: corners either side of the parting line, below the eyes
    lips = made.lips
    assert lips.left[0] < lips.split[0] < lips.right[0]
    assert lips.top[1] < lips.split[1] < lips.bottom[1] < lips.chin[1]
    assert min(e.cy for e in made.ann.eyes) < lips.top[1]
    # and it talks like the default avatar: the opening inside the lips, border untouched
    frame = made.frame(1.0, 1.0)
    bad = mouth_defects(made, frame, 1.0)
    assert bad["dark_outside"] == 0 and bad["dark_inside"] > 50, bad
    assert border_diff(frame, made.portrait) == 0
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
