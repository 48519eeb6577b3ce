"""Transcription: one user utterance as one streaming STT sequence.

Audio goes to STT as it comes, in pieces of at least ``SEND_S`` (fewer
requests); whatever queued up while a partial was decoding goes out as one
piece. A speculative end (a pause that may end the turn) flushes the sequence:
the model answers a final of everything so far and keeps the sequence open, so
the transcript is ready when the silence confirms the turn. The audio heard
meanwhile is kept back; if the user goes on talking, ``resume()`` sends it and
the same sequence goes on (the model keeps its committed prefix; nothing is
decoded twice); when the silence confirms the turn, ``end()`` sends it with the
END, which the model answers with the flushed final when only silence came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from pipelines.services import STT, STTSession, Transcript
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.vad import RATE

log = logging.getLogger(__name__)
SEND_S = 0.1
_AUDIO_ONLY = object()  # what was queued ends without END or FLUSH


def _is_flush(item: object) -> bool:
    """What a request ends with: None (END), _AUDIO_ONLY, or else a flush's token."""
    return item is not None and item is not _AUDIO_ONLY


class Utterance:
    def __init__(self, item_id: str, stt: STT, language: str | None, *,
                 on_partial: Callable[[Utterance, str, str], None],
                 on_final: Callable[[Utterance, str, dict], None],
                 on_failed: Callable[[Utterance, str], None],
                 max_s: float = 60.0):
        self.item_id = item_id
        self._stt, self._language = stt, language
        self._on_partial, self._on_final, self._on_failed = on_partial, on_final, on_failed
        self.max_samples = int(max_s * RATE)
        self.audio_samples = 0  # heard in this utterance
        self.sent_samples = 0  # given to the STT sequence
        self._held: list[np.ndarray] = []  # heard since a flush, not sent yet
        self.text = ""
        self.ended = False  # END or FLUSH sent to STT (commit, or a speculative end)
        self.speculative = False  # flushed on a pause that silence has not confirmed yet
        self.confirmed = False  # the turn is over (silence or the client's commit)
        self.final: tuple[str, dict] | None = None
        self.delivered = False  # the confirmed turn's final went out: later ones don't
        self._flush: object | None = None  # the live flush; resume() makes it stale
        self._closed: set[int] = set()  # id() of sessions their task closed
        self._closers: set[asyncio.Task] = set()
        self._start()

    def _start(self) -> None:
        session = self._session = self._stt.open(self._language)
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(session, self._queue))
        self._task.add_done_callback(lambda _task: self._close_if_never_run(session))

    def _close_if_never_run(self, session: STTSession) -> None:
        """A task cancelled before it ran (a pause and its resume in one batch of audio,
        or a session closed at once) never reaches its ``finally``: its stream, opened
        already, would stay open in Triton for good. Close it here instead."""
        if id(session) in self._closed:
            self._closed.discard(id(session))
            return
        closer = asyncio.ensure_future(session.close())
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def full(self) -> bool:
        return self.audio_samples >= self.max_samples

    def push(self, audio: np.ndarray) -> None:
        if self.full:
            return
        audio = audio[:self.max_samples - self.audio_samples]
        self.audio_samples += audio.size
        # a copy: the caller's frames are views of its buffers, and this one waits in
        # the queue (or held back) while an STT round trip is in flight
        audio = audio.copy()
        if self.ended:
            self._held.append(audio)
        else:
            self._queue.put_nowait(audio)

    def _send_held(self) -> None:
        """The audio heard since the flush goes to the sequence after all."""
        if self._held:
            self._queue.put_nowait(np.concatenate(self._held))
            self._held.clear()

    def end(self, *, speculative: bool = False) -> None:
        """Speculative: flush (a final now, the sequence kept open). Otherwise END,
        also after a flush: with the audio kept back since."""
        if self.ended and (speculative or not self.speculative):
            return
        if self.ended:  # confirming a flushed utterance
            self._send_held()
        self.ended, self.speculative = True, speculative
        if speculative:
            self._flush = object()
        self._queue.put_nowait(self._flush if speculative else None)

    def resume(self) -> None:
        """The pause was not the end: the same sequence goes on with the audio kept
        back since the flush."""
        self.ended = self.speculative = False
        self.final, self._flush = None, None  # an answer to the flush is stale now
        self._send_held()

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await asyncio.sleep(0)  # let the done callback schedule its close, if any
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    async def _run(self, session: STTSession, queue: asyncio.Queue) -> None:
        """Send the queued audio, one request in flight (what queues up meanwhile goes
        out as one piece); an END or FLUSH goes out at once, even while an answer is
        awaited, so it is not a round trip late (on a busy model, a batch late). The
        answers are handled in order."""
        pending: list[np.ndarray] = []
        pending_samples = 0
        flight: deque[tuple[asyncio.Future, object]] = deque()  # (answers, what ended it)
        getter: asyncio.Future | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                waits = {getter, flight[0][0]} if flight else {getter}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if flight and flight[0][0].done():
                    answers, item = flight.popleft()
                    self._answered(answers.result(), item)
                    if item is None:
                        return  # the END's answer: the utterance is transcribed
                control = _AUDIO_ONLY  # what a request sent now ends with
                if getter.done():
                    item, getter = getter.result(), None
                    while isinstance(item, np.ndarray):  # take all the audio queued up
                        pending.append(item)
                        pending_samples += item.size
                        item = queue.get_nowait() if not queue.empty() else _AUDIO_ONLY
                    control = item  # the queue holds audio, None (END) or a flush token
                if control is _AUDIO_ONLY and (flight or pending_samples < SEND_S * RATE):
                    continue  # audio waits for the answer in flight, and for 0.1 s of it
                data = np.concatenate(pending) if pending else np.zeros(0, np.float32)
                pending, pending_samples = [], 0
                self.sent_samples += data.size
                answers = session.send(data, end=control is None, flush=_is_flush(control))
                flight.append((asyncio.ensure_future(answers), control))
        except (TritonUnavailable, TritonModelError) as exc:
            if session is self._session:
                self._on_failed(self, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end the session silently
            log.exception("transcription of %s failed", self.item_id)
            if session is self._session:
                self._on_failed(self, f"internal error: {type(exc).__name__}")
        finally:
            for answers, _ in flight:
                if answers.done() and not answers.cancelled():
                    answers.exception()  # read: it failed after an earlier one did
                answers.cancel()
            if getter is not None:
                getter.cancel()
            await session.close()
            self._closed.add(id(session))

    def _answered(self, transcripts: list[Transcript], item: object) -> None:
        """The answers of one request; ``item`` is what it carried: None (END), a flush's
        token, or _AUDIO_ONLY."""
        for t in transcripts:
            if t.final:
                if self.delivered or (_is_flush(item) and item is not self._flush):
                    continue  # went out already, or speech resumed since
                self.delivered = self.confirmed
                self.final = (t.text, t.details)
                self._on_final(self, t.text, t.details)
            elif t.text:
                delta = t.text[len(self.text):] if t.text.startswith(self.text) else t.text
                self.text = t.text
                self._on_partial(self, delta, t.text)
