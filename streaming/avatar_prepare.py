"""`rtmedia avatar prepare PHOTO`: turn a photo into an avatar in the model store.

Finds the face, eyes and mouth once with OpenCV's Haar cascades (they ship inside
the opencv-python-headless wheel: nothing to download), the lip landmarks the warp
renderer moves (pipelines/avatar.py) from the mouth, crops a square portrait and
writes it with its annotation to ``avatar/<name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipelines.avatar import Annotation, Avatar, Box, Lips, crop_portrait
from streaming.model_store import Manifest, ModelStore, ModelStoreError


def load_image(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, IndexError, OSError) as exc:
        raise ModelStoreError(f"cannot read {path} as an image: {exc}") from None


def detect(image: np.ndarray) -> Annotation:
    try:
        import cv2
    except ImportError:
        raise ModelStoreError("face detection needs OpenCV: pip install "
                              "'opencv-python-headless<4.12' (or .[avatar])") from None
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    cascade = lambda name: cv2.CascadeClassifier(cv2.data.haarcascades + name)  # noqa: E731
    side = min(gray.shape)
    faces = cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, 1.1, 5, minSize=(max(40, side // 12),) * 2)
    if len(faces) == 0:
        raise ModelStoreError("no face found in the photo: use a well-lit, frontal portrait "
                              "where the face is at least 1/12 of the picture")
    x, y, w, h = (int(v) for v in max(faces, key=lambda f: f[2] * f[3]))
    face = Box(x + w / 2, y + h / 2, w, h)
    eyes = cascade("haarcascade_eye.xml").detectMultiScale(gray[y:y + h // 2, x:x + w], 1.1, 5)
    eye_boxes = sorted((Box(x + ex + ew / 2, y + ey + eh / 2, ew, eh)
                        for ex, ey, ew, eh in eyes), key=lambda b: -b.w * b.h)[:2]
    if len(eye_boxes) < 2:  # typical proportions of a frontal face
        eye_boxes = [Box(x + w * 0.3, y + h * 0.4, w * 0.22, h * 0.22),
                     Box(x + w * 0.7, y + h * 0.4, w * 0.22, h * 0.22)]
    lower = gray[y + h // 2:y + h, x:x + w]
    mouths = cascade("haarcascade_smile.xml").detectMultiScale(
        lower, 1.1, 15, minSize=(max(8, w // 6), max(4, h // 12)))
    if len(mouths) > 0:
        mx, my, mw, mh = max(mouths, key=lambda m: m[2] * m[3])
        mouth = Box(x + mx + mw / 2, y + h // 2 + my + mh / 2, mw, mh)
    else:
        mouth = Box(x + w / 2, y + h * 0.78, w * 0.4, h * 0.18)
    return Annotation(face, tuple(sorted(eye_boxes, key=lambda b: b.cx)), mouth,
                      find_lips(gray, mouth, face))


def find_lips(gray: np.ndarray, mouth: Box, face: Box) -> Lips:
    """Lip landmarks from the mouth box: typical proportions, with the parting line (the
    darkest row across the middle of the mouth, or the lower edge of visible teeth) and
    the corners (the outermost dark points at either end of that line) read from the
    photo."""
    lips = Lips.from_box(mouth, face)
    x0, x1 = int(mouth.cx - mouth.w * 0.2), int(mouth.cx + mouth.w * 0.2)
    y0, y1 = int(mouth.cy - mouth.h * 0.35), int(mouth.cy + mouth.h * 0.4)
    band = gray[max(0, y0):y1, max(0, x0):x1].astype(np.float32)
    if band.shape[0] < 4 or band.shape[1] < 2:
        return lips
    rows = band.mean(axis=1)
    # teeth: the largest fall in brightness going down marks their lower edge
    fall = rows[:-1] - rows[1:]
    split_y = y0 + (int(np.argmax(fall)) + 1 if fall.max() > 25 else int(np.argmin(rows)))
    cx = mouth.cx
    corners = []
    for side in (-1, 1):
        xs = np.arange(int(cx + side * mouth.w * 0.25), int(cx + side * mouth.w * 0.6), side)
        ys = np.arange(int(split_y - mouth.h * 0.3), int(split_y + mouth.h * 0.1))
        xs = xs[(xs >= 0) & (xs < gray.shape[1])]
        ys = ys[(ys >= 0) & (ys < gray.shape[0])]
        if xs.size == 0 or ys.size == 0:
            return lips
        patch = gray[np.ix_(ys, xs)].astype(np.float32)
        # the corner: the outermost column still clearly darker than the cheek
        col_min = patch.min(axis=0)
        dark = col_min < col_min.min() + 0.5 * (np.median(patch) - col_min.min())
        ix = int(np.nonzero(dark)[0].max())
        corners.append((float(xs[ix]), float(ys[int(np.argmin(patch[:, ix]))])))
    lip_h = lips.bottom[1] - lips.split[1]
    return Lips(corners[0], corners[1], (cx, min(lips.top[1], split_y - 2.0)),
                (cx, float(split_y)), (cx, split_y + lip_h), lips.chin)


def prepare(store: ModelStore, photo: Path, name: str) -> Path:
    image = load_image(photo)
    ann = detect(image)
    portrait, scaled = crop_portrait(image, ann)
    store.setup()
    staging = store.staging_dir("avatar", name)
    try:
        Avatar(portrait, scaled).save(staging, source=str(photo))
        manifest = Manifest(name, "avatar", store.describe_files(staging),
                            {"type": "photo", "path": str(photo)}, "the photo's own",
                            f"avatar prepared from {photo.name}", time.time())
        return store.commit(staging, manifest)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
