"""`rtmedia avatar prepare PHOTO`: turn a photo into an avatar in the model store.

Finds the face, eyes and mouth once with OpenCV's Haar cascades (they ship inside
the opencv-python-headless wheel: nothing to download), crops a square portrait
and writes it with its annotation to ``avatar/<name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipelines.avatar import Annotation, Avatar, Box, crop_portrait
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
    return Annotation(face, tuple(sorted(eye_boxes, key=lambda b: b.cx)), mouth)


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
