"""The latest frame of a session's camera (WebRTC video from the browser).

Frames arrive at the camera's rate; only the newest is kept (no copy, no encoding)
until a user turn asks what the camera shows: then it is scaled and JPEG-encoded
once. A frame older than ``max_age_s`` means the camera is off or stalled.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable


class LatestFrame:
    def __init__(self, *, max_age_s: float = 2.0, max_side: int = 512,
                 clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self.max_side = max_side
        self.clock = clock
        self._frame = None
        self._at = 0.0
        self.frames = 0

    def put(self, frame) -> None:
        """An ``av.VideoFrame`` (or anything with ``to_image()``) just received."""
        self._frame, self._at = frame, self.clock()
        self.frames += 1

    def clear(self) -> None:
        self._frame = None

    def jpeg(self) -> bytes | None:
        """The newest frame as JPEG, or None when there is none recent enough."""
        if self._frame is None or self.clock() - self._at > self.max_age_s:
            return None
        from PIL import Image

        image = self._frame.to_image()
        image.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=85)
        return buf.getvalue()
