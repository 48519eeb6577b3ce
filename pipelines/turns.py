"""Turn detection: VAD events and the audio that belongs to the user's turn.

``TurnDetector.feed`` takes 16 kHz audio of any size and returns, in order,
what happened: the turn started (with the pre-roll kept from before the speech
start), audio of the turn, a pause that may be its end (the agent may start a
speculative reply), speech resumed after such a pause, the turn ended. Audio
outside a turn is kept only as pre-roll, never as a growing buffer.

Semantic end of turn (``turn_detection.type: "semantic_vad"``): silence alone
either cuts slow speakers off or waits too long. At each pause ``SemanticEndOfTurn``
asks an end-of-turn model (smart-turn, in Triton) whether the last 8 s of the turn
sound finished; a short silence then ends the turn when it says complete, a long
one when it says incomplete. ``eagerness`` picks the pair (``SEMANTIC``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.services import TurnJudge
from pipelines.vad import FRAME, RATE, VadConfig, VoiceActivity

log = logging.getLogger(__name__)
JUDGE_WINDOW_S = 8  # the end-of-turn model looks at this much of the turn


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
        # the turn's last JUDGE_WINDOW_S of audio, for the end-of-turn model
        self._recent: deque[np.ndarray] = deque(maxlen=JUDGE_WINDOW_S * RATE // FRAME)

    @property
    def speaking(self) -> bool:
        return self.vad.speaking

    @property
    def now_ms(self) -> int:
        return self.vad.now_ms

    @property
    def end_silence_ms(self) -> int:
        """The silence that ends the turn at the current pause."""
        return self.vad.end_silence_ms

    @end_silence_ms.setter
    def end_silence_ms(self, ms: int) -> None:
        self.vad.end_silence_ms = ms

    def recent_audio(self) -> np.ndarray:
        """The current turn's last 8 s (its pre-roll included)."""
        if not self._recent:
            return np.zeros(0, np.float32)
        return np.concatenate(list(self._recent))[-JUDGE_WINDOW_S * RATE:]

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
                    prefix = self._take_prefix()
                    self._recent.clear()
                    if prefix.size:
                        self._recent.append(prefix)
                    out.append(TurnEvent("started", ev.at_ms, prefix))
                elif ev.kind == "speech_resumed":
                    out.append(TurnEvent("resumed", ev.at_ms))
            if self._in_turn:
                self._recent.append(piece)
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


# -- semantic end of turn -------------------------------------------------------------------
@dataclass(frozen=True)
class SemanticTurn:
    """semantic_vad: the silence (ms) that ends a turn, by the end-of-turn model's verdict."""

    eagerness: str = "auto"
    complete_ms: int = 300  # the model says the user is done
    incomplete_ms: int = 2000  # the model says the user is mid-sentence
    unknown_ms: int = 500  # no verdict (model not loaded or failed): plain server VAD
    threshold: float = 0.5  # probability of "complete" above which the turn is complete


# OpenAI's eagerness: high answers soonest, low lets the user take their time.
SEMANTIC = {
    "high": SemanticTurn("high", 200, 1000, 400),
    "medium": SemanticTurn("medium", 300, 2000, 500),
    "auto": SemanticTurn("auto", 300, 2000, 500),
    "low": SemanticTurn("low", 600, 4000, 800),
}


class SemanticEndOfTurn:
    """Sets the silence that ends the turn at each pause from the model's verdict.

    ``paused(turns)`` (the VAD's first short pause) asks the judge about the
    turn's recent audio; the answer shortens or lengthens this pause's end-of-turn
    silence in ``turns``. ``resumed()`` drops a pending question (the VAD has already put the
    silence back to the long one). ``verdicts`` keeps (probability, silence_ms)
    of every answer, for tests and benchmarks.
    """

    def __init__(self, policy: SemanticTurn, judge: TurnJudge | None):
        self.policy, self.judge = policy, judge
        self.verdicts: list[tuple[float | None, int]] = []
        self._task: asyncio.Task | None = None
        self._warned = False

    def paused(self, turns: TurnDetector) -> None:
        self.cancel()
        if self.judge is None:
            self._decide(turns, None)
            return
        self._task = asyncio.create_task(self._ask(turns, turns.recent_audio()))

    def resumed(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _ask(self, turns: TurnDetector, audio: np.ndarray) -> None:
        try:
            p: float | None = float(await self.judge.complete(audio))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the turn still ends: on silence alone
            if not self._warned:
                log.warning("end-of-turn model unavailable, ending turns on silence: %s", exc)
                self._warned = True
            p = None
        self._decide(turns, p)

    def _decide(self, turns: TurnDetector, p: float | None) -> None:
        policy = self.policy
        if p is None:
            ms = policy.unknown_ms
        else:
            ms = policy.complete_ms if p >= policy.threshold else policy.incomplete_ms
        turns.end_silence_ms = ms
        self.verdicts.append((p, ms))
