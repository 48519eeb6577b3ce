"""The output side: reply audio from generation until the listener has heard it.

Generation finishes long before playback does (an LLM + TTS reply of 10 s of
speech is ready after ~1 s), so "the assistant is speaking" is a fact about the
output, not about generation. ``Playout`` owns it: it records which text each
piece of audio speaks, hands the audio to a transport ``AudioSink`` that knows
how much has been played, and on barge-in stops the sink at once and reports
what was heard, so the history keeps only that.

Sinks:
- ``PacedDeltaSink`` (WebSocket): sends ``ResponseAudioDelta`` frames paced at
  real time, at most ``lead_s`` ahead of the client's playback, so an
  interruption can actually stop the audio; it models the client's playhead
  (playing whenever it has audio) to know what was heard.
- the WebRTC media tracks (``streaming/webrtc.py``), paced by their own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines import frames as F
from pipelines.clock import SYSTEM_CLOCK, Clock
from pipelines.conversation import Span
from pipelines.responder import AudioOut


class AudioSink(Protocol):
    rate: int

    async def write(self, response_id: str, item_id: str, pcm: np.ndarray,
                    alignment: dict | None, offset_s: float) -> None:
        """Queue audio of ``response_id`` (int16 at ``rate``) for playback."""
        ...

    def clear(self) -> None:
        """Stop now: drop everything not yet played."""
        ...

    def played_s(self, response_id: str) -> float:
        """Seconds of ``response_id`` played so far (frozen once cleared or replaced)."""
        ...

    def pending_s(self) -> float:
        """Seconds queued or buffered at the listener, not yet played."""
        ...

    async def flush(self) -> None:
        """Return once everything written has left the server."""
        ...


@dataclass(frozen=True)
class Heard:
    response_id: str
    item_id: str
    audio_end_s: float


class Playout:
    """The reply being played: its spans (text <-> audio time) and its sink."""

    def __init__(self, sink: AudioSink):
        self.sink = sink
        self.response_id: str | None = None
        self.item_id: str | None = None
        self.spans: list[Span] = []
        self._samples = 0

    def begin(self, response_id: str, item_id: str) -> None:
        self.response_id, self.item_id = response_id, item_id
        self.spans, self._samples = [], 0

    async def write(self, audio: AudioOut) -> None:
        assert self.response_id is not None and self.item_id is not None
        rate = self.sink.rate
        start = self._samples / rate
        self._samples += audio.pcm.size
        end = self._samples / rate
        if audio.text or not self.spans:
            self.spans.append(Span(audio.text, start, end))
        else:  # a later piece of the same clause
            last = self.spans[-1]
            self.spans[-1] = Span(last.text, last.start_s, end)
        await self.sink.write(self.response_id, self.item_id, audio.pcm, audio.alignment, start)

    @property
    def audio_s(self) -> float:
        return self._samples / self.sink.rate

    @property
    def speaking(self) -> bool:
        return self.sink.pending_s() > 0

    def heard(self) -> Heard | None:
        if self.response_id is None or self.item_id is None:
            return None
        played = min(self.audio_s, self.sink.played_s(self.response_id))
        return Heard(self.response_id, self.item_id, played)

    def interrupt(self) -> Heard | None:
        """Stop playback now; what was heard of the reply that was playing (None when
        nothing of it was still to be played)."""
        if not self.speaking:
            return None
        heard = self.heard()
        self.sink.clear()
        return heard


class PacedDeltaSink:
    """Reply audio as ``ResponseAudioDelta`` frames, paced to the listener's playback.

    The listener is assumed to play audio as it arrives and to keep playing while it
    has some: its playhead is modelled from what was sent and when, so ``played_s``
    holds across stalls of generation.
    """

    def __init__(self, emit: Callable[[F.Frame], None], *, rate: int = 24000,
                 delta_ms: int = 200, lead_s: float = 0.5, clock: Clock = SYSTEM_CLOCK):
        self.emit = emit
        self.rate = rate
        self.delta_ms = delta_ms
        self.lead_s = lead_s
        self.clock = clock
        self._queue: deque[tuple[str, str, np.ndarray, dict | None]] = deque()
        self._response: str | None = None
        self._sent = 0  # samples of the current response sent
        self._play_end = 0.0  # when the listener will have played everything sent
        self._frozen: float | None = None  # played_s at clear()
        self._pump: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def write(self, response_id: str, item_id: str, pcm: np.ndarray,
                    alignment: dict | None, offset_s: float) -> None:
        if response_id != self._response:
            self._response, self._sent, self._frozen = response_id, 0, None
        piece = max(1, self.rate * self.delta_ms // 1000)
        for i in range(0, pcm.size, piece):
            self._queue.append((response_id, item_id, pcm[i:i + piece],
                                alignment if i == 0 else None))
        self._idle.clear()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                now = self.clock.now()
                ahead = self._play_end - now
                if ahead > self.lead_s:
                    await self.clock.sleep(ahead - self.lead_s)
                    continue
                response_id, item_id, pcm, alignment = self._queue.popleft()
                self._play_end = max(self._play_end, now) + pcm.size / self.rate
                self._sent += pcm.size
                self.emit(F.ResponseAudioDelta(response_id, item_id,
                                               pcm.astype("<i2").tobytes(), alignment))
        finally:
            self._idle.set()

    def clear(self) -> None:
        if self._response is not None and self._frozen is None:
            self._frozen = self.played_s(self._response)
        self._queue.clear()
        self._play_end = min(self._play_end, self.clock.now())
        if self._pump is not None:
            self._pump.cancel()
        self._idle.set()

    def played_s(self, response_id: str) -> float:
        if response_id != self._response:
            return 0.0
        if self._frozen is not None:
            return self._frozen
        unplayed = max(0.0, self._play_end - self.clock.now())
        return max(0.0, self._sent / self.rate - unplayed)

    def pending_s(self) -> float:
        queued = sum(p.size for _, _, p, _ in self._queue) / self.rate
        return queued + max(0.0, self._play_end - self.clock.now())

    async def flush(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        self.clear()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
