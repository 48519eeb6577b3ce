"""A real-time talking-head renderer that runs on a CPU: a landmark-driven warp of the photo.

An avatar is a square portrait plus where its eyes and lips are (found once, when the
avatar is prepared). Speaking moves the lower lip and the jaw down along the line where
the lips part; the gap that opens shows the inside of the mouth, shaded dark towards
the throat, and everything above the line (upper lip, upper teeth) stays where it is.
Rounded and spread vowels narrow or widen the lips. A blink stretches the upper
eyelid's own skin down over the eye. Every warp fades to nothing well inside the
frame, so the frame's border is the photo's.

Warped patches are cached per mouth level and eyelid level, so a frame is the portrait
with at most three patches pasted in: well under a millisecond on a CPU.

Mouth shapes follow the TTS phoneme timings (visemes); audio energy is used when no
timings are given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
SIZE = 384  # portrait side in pixels (the page shows it at up to 512 px)
LEVELS = 16  # mouth openness levels (0 = closed)
WIDTHS = (0.88, 1.0, 1.06)  # rounded / neutral / spread: lip width factor
LID_LEVELS = 6  # eyelid positions (0 = open)

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
class Lips:
    """Mouth landmarks (x, y): the corners, the top of the upper lip, the middle of the
    line where the lips part (for a smile with teeth: below the upper teeth), the bottom
    of the lower lip and the chin."""

    left: tuple[float, float]
    right: tuple[float, float]
    top: tuple[float, float]
    split: tuple[float, float]
    bottom: tuple[float, float]
    chin: tuple[float, float]

    def scaled(self, s: float, dx: float = 0, dy: float = 0) -> Lips:
        return Lips(**{k: ((x - dx) * s, (y - dy) * s) for k, (x, y) in self.__dict__.items()})

    @classmethod
    def from_box(cls, mouth: Box, face: Box) -> Lips:
        """Typical proportions when only a mouth box is known (avatars made before lips)."""
        cx, cy, w, h = mouth.cx, mouth.cy, mouth.w, mouth.h
        return cls((cx - w * 0.38, cy - h * 0.05), (cx + w * 0.38, cy - h * 0.05),
                   (cx, cy - h * 0.1), (cx, cy + h * 0.25), (cx, cy + h * 0.5),
                   (cx, max(cy + h * 1.45, face.cy + face.h * 0.62)))


@dataclass(frozen=True)
class Annotation:
    """Where the face parts are in a portrait (pixels of the source image)."""

    face: Box
    eyes: tuple[Box, ...]
    mouth: Box
    lips: Lips | None = None

    def to_json(self) -> dict:
        d = {"face": self.face.__dict__, "eyes": [e.__dict__ for e in self.eyes],
             "mouth": self.mouth.__dict__}
        if self.lips is not None:
            d["lips"] = {k: list(v) for k, v in self.lips.__dict__.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> Annotation:
        lips = Lips(**{k: tuple(v) for k, v in d["lips"].items()}) if "lips" in d else None
        return cls(Box(**d["face"]), tuple(Box(**e) for e in d["eyes"]), Box(**d["mouth"]),
                   lips)

    def scaled(self, s: float, dx: float = 0, dy: float = 0) -> Annotation:
        return Annotation(self.face.scaled(s, dx, dy),
                          tuple(e.scaled(s, dx, dy) for e in self.eyes),
                          self.mouth.scaled(s, dx, dy),
                          self.lips.scaled(s, dx, dy) if self.lips else None)


def crop_portrait(image: np.ndarray, ann: Annotation, size: int = SIZE,
                  margin: float = 2.6) -> tuple[np.ndarray, Annotation]:
    """A square crop around the face, resized to ``size``, and the annotation in it."""
    import av  # libswscale through PyAV: no extra image library needed

    side = int(max(ann.face.w, ann.face.h) * margin)
    side = min(side, image.shape[0], image.shape[1])
    cx, cy = ann.face.cx, ann.face.cy + ann.face.h * 0.15  # a little more chin than hair
    x0 = int(np.clip(cx - side / 2, 0, max(0, image.shape[1] - side)))
    y0 = int(np.clip(cy - side / 2, 0, max(0, image.shape[0] - side)))
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side, :3])
    frame = av.VideoFrame.from_ndarray(crop, format="rgb24").reformat(
        width=size, height=size, interpolation="AREA" if side > size else "LANCZOS")
    return frame.to_ndarray(), ann.scaled(size / side, x0, y0)


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB image as PNG (through PyAV, as everything else here)."""
    import av

    with av.open(str(path), "w") as c:
        stream = c.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image[..., :3]), format="rgb24")), *stream.encode()]:
            c.mux(packet)


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (float32, HxWx3) at (xs, ys)."""
    h, w = img.shape[:2]
    xs = np.clip(xs, 0, w - 1.001)
    ys = np.clip(ys, 0, h - 1.001)
    x0, y0 = xs.astype(np.int32), ys.astype(np.int32)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _smooth(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3 - 2 * v)


@dataclass(frozen=True)
class _Patch:
    y0: int
    y1: int
    x0: int
    x1: int
    pixels: np.ndarray


class Avatar:
    """A prepared avatar: portrait, annotation and cached warped patches."""

    def __init__(self, portrait: np.ndarray, ann: Annotation):
        self.portrait = np.ascontiguousarray(portrait[..., :3]).astype(np.uint8)
        self.lips = ann.lips or Lips.from_box(ann.mouth, ann.face)
        self.ann = Annotation(ann.face, ann.eyes, ann.mouth, self.lips)
        self.h, self.w = portrait.shape[:2]
        self._f32 = self.portrait.astype(np.float32)
        L = self.lips
        self.mid_x = (L.left[0] + L.right[0]) / 2
        self.half_w = max(4.0, (L.right[0] - L.left[0]) / 2)
        # the parting line: a parabola through both corners and the middle
        xs = np.array([L.left[0], L.split[0], L.right[0]])
        ys = np.array([L.left[1], L.split[1], L.right[1]])
        self._split = np.polyfit(xs, ys, 2)
        self.max_drop = self.half_w * 0.45  # the widest opening, in pixels
        self.jaw = max(8.0, L.chin[1] - L.split[1])
        self.mx0 = int(max(1, self.mid_x - self.half_w * 1.9))
        self.mx1 = int(min(self.w - 1, self.mid_x + self.half_w * 1.9))
        self.my0 = int(max(1, L.top[1] - (L.split[1] - L.top[1]) * 0.5 - 3))
        self.my1 = int(min(self.h - 1, L.chin[1] + self.jaw * 0.3 + 2 * self.max_drop + 2))
        self._mouths: dict[tuple[int, int], _Patch] = {}
        self._lids: dict[int, list[_Patch]] = {}

    @classmethod
    def load(cls, folder: Path) -> Avatar:
        import av

        ann = Annotation.from_json(json.loads((folder / "avatar.json").read_text())["annotation"])
        with av.open(str(folder / "portrait.png")) as c:
            portrait = next(c.decode(video=0)).to_ndarray(format="rgb24")
        return cls(portrait, ann)

    def save(self, folder: Path, source: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / "portrait.png", self.portrait)
        (folder / "avatar.json").write_text(json.dumps(
            {"annotation": self.ann.to_json(), "size": [self.w, self.h], "fps": FPS,
             "renderer": "warp", "source": source}, indent=2) + "\n")

    # -- geometry (also used by tests) -----------------------------------------------------
    def split_y(self, x: np.ndarray | float) -> np.ndarray | float:
        return np.polyval(self._split, x)

    def drop(self, openness: float) -> float:
        return float(np.clip(openness, 0, 1)) * self.max_drop

    def lip_outline(self, openness: float = 0.0, width_class: int = 1) -> np.ndarray:
        """Points (x, y) around the lips with the mouth this open: the corners moved in or
        out with the width, the lower lip carried down by the opening."""
        L, d, k = self.lips, self.drop(openness), WIDTHS[width_class]
        lip_h = max(2.0, L.bottom[1] - L.split[1])
        pts = [(L.top[0], L.top[1])]
        for u in np.linspace(-1, 1, 11):
            x = self.mid_x + u * self.half_w
            prof = (1 - u * u) ** 0.6
            pts.append((self.mid_x + u * self.half_w * k,
                        float(self.split_y(x)) + lip_h * (1 - u * u) + d * prof))
        return np.array(pts, np.float32)

    def mouth_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the area the mouth and jaw warp may change."""
        return self.mx0, self.my0, self.mx1, self.my1

    # -- warps --------------------------------------------------------------------------------
    def _mouth_patch(self, level: int, width_class: int) -> _Patch:
        key = (level, width_class)
        if key not in self._mouths:
            self._mouths[key] = self._warp_mouth(level / (LEVELS - 1), WIDTHS[width_class])
        return self._mouths[key]

    def _warp_mouth(self, openness: float, k: float) -> _Patch:
        x0, x1, y0, y1 = self.mx0, self.mx1, self.my0, self.my1
        Y, X = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        hw, mx, L = self.half_w, self.mid_x, self.lips
        D = self.drop(openness)
        # 1. width: lips pulled towards (or away from) the middle, fading out by 1.8 lip
        # half-widths sideways and towards the nose and under the chin
        wwin = (_smooth((1.8 - np.abs(X - mx) / hw) / 0.7)
                * _smooth((Y - (L.top[1] - 0.4 * (L.split[1] - L.top[1]))) / 4.0)
                * _smooth((L.chin[1] - Y) / (0.5 * self.jaw)))
        sx = X - (X - mx) * (1 - 1 / k) * wwin
        # 2. opening: below the parting line, pixels come from higher up (the jaw drops).
        # Near the line the drop follows the lips (nothing at the corners), further down
        # the whole jaw moves; under the chin it fades out.
        s = self.split_y(sx)
        below = Y - s
        u_out = (X - mx) / (hw * k)  # where the (narrowed) corners now are
        lip_prof = np.clip(1 - u_out ** 2, 0, 1) ** 0.6
        jaw_prof = _smooth((1.75 - np.abs(X - mx) / hw) / 0.9)
        lip_h = max(2.0, L.bottom[1] - L.split[1])
        a = np.clip(1 - below / (2.0 * (lip_h + D) + 2), 0, 1)
        fade = 1 - _smooth((Y - L.chin[1]) / (0.3 * self.jaw + 1.5 * D + 1))
        d = np.where(below > 0, D * (a * lip_prof + (1 - a) * jaw_prof) * fade, 0.0)
        sy = Y - d
        out = _sample(self._f32, sx, sy)
        if D > 0.3:
            # 3. the inside of the mouth, where the source would be above the line
            gap = np.maximum(D * lip_prof, 1e-3)
            depth = np.clip((below) / gap, 0, 1)  # 0 under the teeth, 1 at the lower lip
            cover = np.clip(s - sy + 0.5, 0, 1) * np.clip(below + 0.5, 0, 1)
            cover *= np.clip(lip_prof * 4, 0, 1)  # soft towards the corners
            shade = (0.55 + 0.45 * np.abs(u_out).clip(0, 1) ** 2)[..., None]
            throat = np.array([38, 12, 16], np.float32)
            tongue = np.array([128, 54, 60], np.float32)
            t = _smooth((depth - 0.55) / 0.45)[..., None] * min(1.0, openness * 1.6)
            inside = (throat * (1 - t) + tongue * t) * shade
            inside *= (0.6 + 0.4 * _smooth(depth / 0.35))[..., None]  # teeth's shadow
            out = out * (1 - cover[..., None]) + inside * cover[..., None]
        pixels = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return _Patch(y0, y1, x0, x1, pixels)

    def _eye_geometry(self, e: Box) -> tuple[float, float, float, float, float]:
        """Eye opening centre, half width, half height and the lid's height above it."""
        return e.cx, e.cy + e.h * 0.05, e.w * 0.47, e.h * 0.17, e.h * 0.22

    def _lid_patches(self, level: int) -> list[_Patch]:
        if level not in self._lids:
            self._lids[level] = [self._warp_lid(e, level / (LID_LEVELS - 1))
                                 for e in self.ann.eyes]
        return self._lids[level]

    def _warp_lid(self, e: Box, closure: float) -> _Patch:
        ex, ey, ew, eh, lh = self._eye_geometry(e)
        x0, x1 = int(max(1, ex - ew * 1.3)), int(min(self.w - 1, ex + ew * 1.3 + 1))
        y0, y1 = int(max(1, ey - eh - lh - 2)), int(min(self.h - 1, ey + eh * 1.3 + 3))
        Y, X = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        q = np.sqrt(np.clip(1 - ((X - ex) / ew) ** 2, 0, 1))
        base = ey - eh - lh  # the top of the eyelid's skin: fixed
        top = ey - eh * q  # the lash line now
        edge = top + closure * 2.3 * eh * q  # where the lash line goes
        # stretch the lid (base..top) down to base..edge; below the edge: unchanged
        inside = (Y >= base) & (Y < edge)
        sy = np.where(inside, base + (Y - base) * (top - base) / np.maximum(edge - base, 1e-3),
                      Y)
        pixels = np.clip(_sample(self._f32, X, sy) + 0.5, 0, 255).astype(np.uint8)
        return _Patch(y0, y1, x0, x1, pixels)

    # -- frames -------------------------------------------------------------------------------
    def frame(self, t: float, openness: float = 0.0, width_class: int = 1) -> np.ndarray:
        """The frame at stream time ``t`` (blinks) with this mouth."""
        out = self.portrait.copy()
        level = round(float(np.clip(openness, 0, 1)) * (LEVELS - 1))
        if level or width_class != 1:
            p = self._mouth_patch(level, width_class)
            out[p.y0:p.y1, p.x0:p.x1] = p.pixels
        lid = round(eyelid(t) * (LID_LEVELS - 1))
        if lid:
            for p in self._lid_patches(lid):
                out[p.y0:p.y1, p.x0:p.x1] = p.pixels
        return out


def eyelid(t: float) -> float:
    """How closed the eyes are at ``t`` (0..1): blinks of ~240 ms every ~3.7 s,
    irregular enough to look natural; the lid falls faster than it rises."""
    t += 1.3  # not at the very start of a stream
    period = 3.7 + 0.8 * math.sin(int(t / 3.7) * 12.9898)
    x = t % period
    if x < 0.08:
        return x / 0.08
    if x < 0.12:  # shut for at least one frame at 25 fps
        return 1.0
    if x < 0.24:
        return 1 - (x - 0.12) / 0.12
    return 0.0


def blinking(t: float) -> bool:
    return eyelid(t) > 0.5


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
