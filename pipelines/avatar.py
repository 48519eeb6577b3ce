"""A real-time talking-head renderer that runs on a CPU.

An avatar is a square portrait plus where its eyes and mouth are (found once,
when the avatar is prepared). From that, a set of mouth sprites is built: the
lower lip and chin pushed down by increasing amounts with a dark mouth opening,
in three widths (rounded, neutral, spread vowels). A frame is the portrait with
one sprite pasted in, eyelids closed during blinks and a small head motion, so
rendering costs well under a millisecond.

Mouth shapes follow the TTS phoneme timings (visemes); audio energy is used
when no timings are given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
SIZE = 256
LEVELS = 8  # mouth openness levels (0 = closed)
WIDTHS = (0.85, 1.0, 1.12)  # rounded / neutral / spread

# IPA phoneme -> (openness 0..1, width class)
_OPEN = {**dict.fromkeys("aɑæɐ", (1.0, 1)), **dict.fromkeys("ʌɒ", (0.85, 1)),
         **dict.fromkeys("eɛəɜɚ", (0.6, 2)), **dict.fromkeys("iɪjy", (0.35, 2)),
         **dict.fromkeys("oɔ", (0.7, 0)), **dict.fromkeys("uʊw", (0.45, 0)),
         **dict.fromkeys("pbm", (0.0, 1)), **dict.fromkeys("fv", (0.12, 1)),
         **dict.fromkeys("θð", (0.2, 1)), **dict.fromkeys("szʃʒ", (0.18, 2)),
         **dict.fromkeys("tdnlrɹɾkgŋhʔ", (0.3, 1))}


@dataclass(frozen=True)
class Box:
    cx: float
    cy: float
    w: float
    h: float

    def scaled(self, s: float, dx: float = 0, dy: float = 0) -> Box:
        return Box((self.cx - dx) * s, (self.cy - dy) * s, self.w * s, self.h * s)


@dataclass(frozen=True)
class Annotation:
    """Where the face parts are in a portrait (pixels of the source image)."""

    face: Box
    eyes: tuple[Box, ...]
    mouth: Box

    def to_json(self) -> dict:
        return {"face": self.face.__dict__, "eyes": [e.__dict__ for e in self.eyes],
                "mouth": self.mouth.__dict__}

    @classmethod
    def from_json(cls, d: dict) -> Annotation:
        return cls(Box(**d["face"]), tuple(Box(**e) for e in d["eyes"]), Box(**d["mouth"]))


def crop_portrait(image: np.ndarray, ann: Annotation, size: int = SIZE,
                  margin: float = 2.2) -> tuple[np.ndarray, Annotation]:
    """A square crop around the face, resized to ``size``, and the annotation in it."""
    import av  # libswscale through PyAV: no extra image library needed

    side = int(max(ann.face.w, ann.face.h) * margin)
    cx, cy = ann.face.cx, ann.face.cy + ann.face.h * 0.15  # a little more chin than hair
    x0 = int(np.clip(cx - side / 2, 0, max(0, image.shape[1] - side)))
    y0 = int(np.clip(cy - side / 2, 0, max(0, image.shape[0] - side)))
    side = min(side, image.shape[0] - y0, image.shape[1] - x0)
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side, :3])
    frame = av.VideoFrame.from_ndarray(crop, format="rgb24").reformat(
        width=size, height=size, interpolation="AREA")
    s = size / side
    scaled = Annotation(ann.face.scaled(s, x0, y0), tuple(e.scaled(s, x0, y0) for e in ann.eyes),
                        ann.mouth.scaled(s, x0, y0))
    return frame.to_ndarray(), scaled


class Avatar:
    """A prepared avatar: portrait, annotation and precomputed sprites."""

    def __init__(self, portrait: np.ndarray, ann: Annotation):
        self.portrait = portrait.astype(np.uint8)
        self.ann = ann
        self.h, self.w = portrait.shape[:2]
        m = ann.mouth
        # the region the sprites replace: mouth plus room for the jaw to drop
        self.mx0 = int(max(0, m.cx - m.w * 0.95))
        self.mx1 = int(min(self.w, m.cx + m.w * 0.95))
        self.my0 = int(max(0, m.cy - m.h * 0.9))
        self.my1 = int(min(self.h, m.cy + m.h * 2.4))
        self.sprites = [[self._mouth_sprite(level / (LEVELS - 1), width)
                         for level in range(LEVELS)] for width in WIDTHS]
        self.closed_eyes = [self._closed_eye(e) for e in ann.eyes]

    @classmethod
    def load(cls, folder: Path) -> Avatar:
        import av

        ann = Annotation.from_json(json.loads((folder / "avatar.json").read_text())["annotation"])
        with av.open(str(folder / "portrait.png")) as c:
            portrait = next(c.decode(video=0)).to_ndarray(format="rgb24")
        return cls(portrait, ann)

    def save(self, folder: Path, source: str) -> None:
        import av

        folder.mkdir(parents=True, exist_ok=True)
        with av.open(str(folder / "portrait.png"), "w") as c:
            stream = c.add_stream("png")
            stream.width, stream.height, stream.pix_fmt = self.w, self.h, "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(self.portrait,
                                                                   format="rgb24")):
                c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)
        (folder / "avatar.json").write_text(json.dumps(
            {"annotation": self.ann.to_json(), "size": [self.w, self.h], "fps": FPS,
             "source": source}, indent=2) + "\n")

    # -- sprites ----------------------------------------------------------------------------
    def _mouth_sprite(self, openness: float, width: float) -> np.ndarray:
        region = self.portrait[self.my0:self.my1, self.mx0:self.mx1].astype(np.float32)
        if openness <= 0:
            return region.astype(np.uint8)
        m = self.ann.mouth
        rh, rw = region.shape[:2]
        cy = m.cy - self.my0
        cx = m.cx - self.mx0
        drop = openness * m.h * 0.9  # how far the lower lip and chin move down
        yy, xx = np.mgrid[0:rh, 0:rw].astype(np.float32)
        # Displacement field: zero above the lips and at the region's borders, full just
        # below the lips; pixels are pulled from above, so the jaw appears to drop.
        fy = np.clip((yy - cy + m.h * 0.15) / (m.h * 0.3), 0, 1) * \
            np.clip((rh - yy) / max(1.0, rh - cy - m.h * 0.3), 0, 1)
        fx = np.clip(np.cos(np.clip((xx - cx) / (rw / 2), -1, 1) * np.pi / 2) * 1.3, 0, 1)
        src_y = np.clip(yy - drop * fy * fx, 0, rh - 1).astype(np.int32)
        out = region[src_y, xx.astype(np.int32)]
        # the opening: a dark ellipse between the lips, shaded towards the edges
        ax = m.w * 0.42 * width * (0.85 + 0.15 * openness)
        ay = max(1.0, drop * 0.55 + m.h * 0.08)
        d = ((xx - cx) / ax) ** 2 + ((yy - (cy + drop * 0.45)) / ay) ** 2
        inside = np.clip((1.0 - d) * 3.0, 0, 1)[..., None]
        cavity = np.array([70, 22, 28], np.float32) * (0.55 + 0.45 * np.clip(d, 0, 1))[..., None]
        teeth = (yy < cy + ay * 0.35) & (d < 0.6)
        cavity[teeth] = (215, 210, 200)
        out = out * (1 - inside) + cavity * inside
        return np.clip(out, 0, 255).astype(np.uint8)

    def _closed_eye(self, e: Box) -> tuple[slice, slice, np.ndarray]:
        """An eyelid: skin colour from just above the eye, blended in an ellipse."""
        y0, y1 = max(0, int(e.cy - e.h * 0.5)), int(e.cy + e.h * 0.5)
        x0, x1 = max(0, int(e.cx - e.w * 0.6)), int(e.cx + e.w * 0.6)
        region = self.portrait[y0:y1, x0:x1].astype(np.float32)
        above = self.portrait[max(0, y0 - (y1 - y0) // 2):y0, x0:x1].astype(np.float32)
        skin = above.reshape(-1, 3).mean(axis=0) if above.size else region.mean(axis=(0, 1))
        hh, ww = region.shape[:2]
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        d = ((xx - ww / 2) / (ww / 2)) ** 2 + ((yy - hh / 2) / (hh / 2)) ** 2
        alpha = np.clip((1.0 - d) * 2.5, 0, 1)[..., None]
        lid = np.empty_like(region)
        lid[:] = skin
        lash = np.abs(yy - hh * 0.55) < max(1.0, hh * 0.06)
        lid[lash] = skin * 0.4
        patch = region * (1 - alpha) + lid * alpha
        return slice(y0, y1), slice(x0, x1), np.clip(patch, 0, 255).astype(np.uint8)

    # -- frames -------------------------------------------------------------------------------
    def frame(self, t: float, openness: float = 0.0, width_class: int = 1) -> np.ndarray:
        """The frame at stream time ``t`` (blinks and head motion) with this mouth."""
        out = self.portrait.copy()
        level = round(np.clip(openness, 0, 1) * (LEVELS - 1))
        out[self.my0:self.my1, self.mx0:self.mx1] = self.sprites[width_class][level]
        if blinking(t):
            for ys, xs, patch in self.closed_eyes:
                out[ys, xs] = patch
        dx = round(2 * math.sin(t * 0.9) + math.sin(t * 2.3))
        dy = round(1.5 * math.sin(t * 0.7 + 1.0))
        if dx or dy:
            out = np.roll(out, (dy, dx), axis=(0, 1))
        return out

    def mouth_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the mouth area in the frame, for tests and benchmarks."""
        return self.mx0, self.my0, self.mx1, self.my1


def blinking(t: float) -> bool:
    """Blinks of 120 ms every ~3.7 s, irregular enough to look natural."""
    t += 1.3  # not at the very start of a stream
    period = 3.7 + 0.8 * math.sin(int(t / 3.7) * 12.9898)
    return (t % period) < 0.12


def viseme_track(phonemes: list, duration_s: float, fps: int = FPS,
                 lead_s: float = 0.0) -> list[tuple[float, int]]:
    """(openness, width class) per video frame from timed phonemes.

    The mouth moves slightly before the sound (``lead_s``), as a speaker's does; each
    frame blends towards its target so shapes do not flicker.
    """
    n = max(1, math.ceil(duration_s * fps))
    targets = [(0.0, 1)] * n
    for ph, start, end in phonemes:
        shape = _OPEN.get(ph[:1], (0.3, 1)) if ph.strip() else (0.0, 1)
        f0 = int(max(0, (start - lead_s)) * fps)
        f1 = max(f0 + 1, math.ceil(max(0, end - lead_s) * fps))
        for f in range(f0, min(f1, n)):
            targets[f] = shape
    out, cur = [], 0.0
    for open_t, width in targets:
        cur = cur + (open_t - cur) * (0.75 if open_t > cur else 0.55)
        out.append((cur, width))
    return out


def energy_track(audio: np.ndarray, rate: int, fps: int = FPS) -> list[tuple[float, int]]:
    """(openness, width) per frame from the audio envelope, when no phonemes are known."""
    step = rate // fps
    n = max(1, math.ceil(audio.size / step))
    x = audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
    rms = np.array([np.sqrt(np.mean(x[i * step:(i + 1) * step] ** 2) + 1e-12)
                    for i in range(n)])
    level = np.clip((20 * np.log10(rms + 1e-9) + 45) / 30, 0, 1)
    return [(float(v), 1) for v in level]
