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
import re
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


# English words a sentence does not end on: a transcript ending in one stops mid-sentence
# (Whisper often closes a cut sentence with a full stop: "a table for.").
DANGLING = frozenset(
    "a an the and or but so because if than that which who whose to for with without of "
    "in on at by from about into onto over under between like as is are was were am be "
    "been my your our their his its this these those could would should can will shall "
    "must might may i we they he she very really just".split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_SENTENCE_END = (".", "?", "!", "\u0964", "\u0965")  # । ॥: Devanagari full stops


def transcript_verdict(text: str) -> bool | None:
    """From the words so far: False when they stop on a word no sentence ends on, True
    when they end a sentence, None when they do not tell."""
    words = _WORD.findall(text.lower())
    if not words:
        return None
    if words[-1] in DANGLING:
        return False
    return True if text.rstrip().endswith(_SENTENCE_END) else None


class SemanticEndOfTurn:
    """Sets the silence that ends the turn at each pause from two signals.

    ``paused(turns, expect_text)`` (the VAD's first short pause) asks the judge
    (the end-of-turn model, on the turn's recent audio); ``transcript(text)`` gives
    the transcript of the turn up to the pause (the agent's speculative final).
    Once both are in (or the transcript is not coming), the pause's end-of-turn
    silence in ``turns`` becomes short or long: incomplete when the words stop on a
    word no sentence ends on, else complete when the model says so or the words end
    a sentence, else incomplete. ``resumed()`` drops a pending question (the VAD has
    already put the silence back to the long one). ``verdicts`` keeps (probability,
    silence_ms) of every decision, for tests and benchmarks.
    """

    _PENDING = object()

    def __init__(self, policy: SemanticTurn, judge: TurnJudge | None):
        self.policy, self.judge = policy, judge
        self.verdicts: list[tuple[float | None, int]] = []
        self._task: asyncio.Task | None = None
        self._turns: TurnDetector | None = None
        self._p: object = None
        self._text: object = None
        self._warned = False

    def paused(self, turns: TurnDetector, expect_text: bool = False) -> None:
        self.cancel()
        self._turns = turns
        self._text = self._PENDING if expect_text else None
        if self.judge is None:
            self._p = None
            self._maybe_decide()
            return
        self._p = self._PENDING
        self._task = asyncio.create_task(self._ask(turns.recent_audio()))

    def transcript(self, text: str) -> None:
        """The words of the turn up to the current pause."""
        if self._turns is not None and self._text is self._PENDING:
            self._text = text
            self._maybe_decide()

    def resumed(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._turns = None

    async def close(self) -> None:
        task, self._task = self._task, None
        self._turns = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _ask(self, audio: np.ndarray) -> None:
        try:
            p: float | None = float(await self.judge.complete(audio))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the turn still ends: on the words or the silence
            if not self._warned:
                log.warning("end-of-turn model unavailable, ending turns on silence: %s", exc)
                self._warned = True
            p = None
        self._p = p
        self._maybe_decide()

    def _maybe_decide(self) -> None:
        turns = self._turns
        if turns is None:
            return
        text, p = self._text, self._p
        said = None if text is None or text is self._PENDING else transcript_verdict(str(text))
        if said is False:  # mid-sentence: no need to wait for the model
            complete: bool | None = False
        elif p is self._PENDING or text is self._PENDING:
            return
        elif p is not None and p >= self.policy.threshold:
            complete = True
        elif said is True:
            complete = True
        elif p is None and said is None:
            complete = None
        else:
            complete = False
        self._turns = None  # one decision per pause
        policy = self.policy
        ms = (policy.unknown_ms if complete is None else
              policy.complete_ms if complete else policy.incomplete_ms)
        turns.end_silence_ms = ms
        self.verdicts.append((None if p is self._PENDING else p, ms))  # type: ignore[arg-type]
