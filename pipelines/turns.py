"""Turn detection: VAD events and the audio that belongs to the user's turn.

``TurnDetector.feed`` takes 16 kHz audio of any size and returns, in order,
what happened: the turn started (with the pre-roll kept from before the speech
start), audio of the turn, a pause that may be its end (the agent may start a
speculative reply), speech resumed after such a pause, the turn ended. Audio
outside a turn is kept only as pre-roll, never as a growing buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.vad import FRAME, RATE, VadConfig, VoiceActivity


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # started | audio | paused | resumed | stopped
    at_ms: int = 0  # audio time of started / stopped (what the protocol reports)
    audio: np.ndarray | None = None  # started: the pre-roll; audio: 20 ms of the turn


class TurnDetector:
    def __init__(self, config: VadConfig | None = None,
                 classifier: Callable[[np.ndarray], bool] | None = None):
        self.config = config or VadConfig()
        self.vad = VoiceActivity(self.config, classifier)
        self._prefix: deque[np.ndarray] = deque()
        self._prefix_samples = 0
        self._in_turn = False

    @property
    def speaking(self) -> bool:
        return self.vad.speaking

    @property
    def now_ms(self) -> int:
        return self.vad.now_ms

    def feed(self, audio: np.ndarray) -> list[TurnEvent]:
        out: list[TurnEvent] = []
        # 20 ms at a time, so a start and a stop inside one large chunk both land on
        # the right audio.
        for i in range(0, audio.size, FRAME):
            piece = audio[i:i + FRAME]
            events = self.vad.feed(piece)
            for ev in events:
                if ev.kind == "speech_started":
                    self._in_turn = True
                    out.append(TurnEvent("started", ev.at_ms, self._take_prefix()))
                elif ev.kind == "speech_resumed":
                    out.append(TurnEvent("resumed", ev.at_ms))
            if self._in_turn:
                out.append(TurnEvent("audio", audio=piece))
            else:
                self._remember(piece)
            for ev in events:
                if ev.kind == "speech_paused":
                    out.append(TurnEvent("paused", ev.at_ms))
                elif ev.kind == "speech_stopped":
                    self._in_turn = False
                    out.append(TurnEvent("stopped", ev.at_ms))
        return out

    def end_turn(self) -> None:
        """The turn was ended from outside (the client's commit or clear)."""
        self._in_turn = False
        self.vad.reset()

    def _remember(self, piece: np.ndarray) -> None:
        self._prefix.append(piece)
        self._prefix_samples += piece.size
        keep = self.config.prefix_padding_ms * RATE // 1000
        while self._prefix and self._prefix_samples - self._prefix[0].size >= keep:
            self._prefix_samples -= self._prefix.popleft().size

    def _take_prefix(self) -> np.ndarray:
        prefix = np.concatenate(list(self._prefix)) if self._prefix else \
            np.zeros(0, np.float32)
        self._prefix.clear()
        self._prefix_samples = 0
        return prefix
