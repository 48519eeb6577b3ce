"""Transcription: one user utterance as one streaming STT sequence.

Audio goes to STT as it comes, in pieces of at least ``SEND_S`` (fewer
requests); whatever queued up while a partial was decoding goes out as one
piece. A speculative end (a pause that may end the turn) ends the sequence
early so the final transcript is ready when the silence confirms the turn; if
the user goes on talking, ``resume()`` abandons that sequence (cancelled in
Triton) and starts a new one with all the utterance's audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import numpy as np

from pipelines.services import STT, STTSession
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.vad import RATE

log = logging.getLogger(__name__)
SEND_S = 0.1


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
        self.audio: list[np.ndarray] = []  # everything heard, to restart after a pause
        self.audio_samples = 0
        self.sent_samples = 0  # audio in the current STT sequence
        self.text = ""
        self.ended = False  # END sent to STT (commit, or a speculative end of turn)
        self.speculative = False  # ended on a pause that silence has not confirmed yet
        self.confirmed = False  # the turn is over (silence or the client's commit)
        self.final: tuple[str, dict] | None = None
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
        self.audio.append(audio)
        self.audio_samples += audio.size
        if not self.ended:
            self._queue.put_nowait(audio)

    def end(self, *, speculative: bool = False) -> None:
        if not self.ended:
            self.ended = True
            self.speculative = speculative
            self._queue.put_nowait(None)

    def resume(self) -> None:
        """The pause was not the end: a new STT sequence with all the audio so far."""
        self._task.cancel()  # its stream closes: Triton drops the abandoned sequence
        self.ended = self.speculative = False
        self.final, self.text, self.sent_samples = None, "", 0
        self._start()
        if self.audio:
            self._queue.put_nowait(np.concatenate(self.audio))

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await asyncio.sleep(0)  # let the done callback schedule its close, if any
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    async def _run(self, session: STTSession, queue: asyncio.Queue) -> None:
        pending: list[np.ndarray] = []
        pending_samples = 0
        try:
            while True:
                chunk = await queue.get()
                end = chunk is None
                if chunk is not None:
                    pending.append(chunk)
                    pending_samples += chunk.size
                while not end and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None:
                        end = True
                    else:
                        pending.append(nxt)
                        pending_samples += nxt.size
                if not end and pending_samples < SEND_S * RATE:
                    continue
                data = np.concatenate(pending) if pending else np.zeros(0, np.float32)
                pending, pending_samples = [], 0
                self.sent_samples += data.size
                for t in await session.push(data, end=end):
                    if session is not self._session:
                        return  # abandoned by resume(): its answers are stale
                    if t.final:
                        self.final = (t.text, t.details)
                        self._on_final(self, t.text, t.details)
                    elif t.text:
                        delta = t.text[len(self.text):] if t.text.startswith(self.text) \
                            else t.text
                        self.text = t.text
                        self._on_partial(self, delta, t.text)
                if end:
                    return
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
            await session.close()
            self._closed.add(id(session))
