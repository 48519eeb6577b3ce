"""The WebRTC data channel's bound on unsent events (a peer that stops reading)."""

from __future__ import annotations

import pytest

from streaming.webrtc import ChannelSender


class Channel:
    """A data channel whose peer reads nothing: every sent byte stays buffered."""

    def __init__(self, state: str = "open") -> None:
        self.readyState = state
        self.bufferedAmount = 0
        self.sent: list[str] = []

    def send(self, data: str) -> None:
        self.sent.append(data)
        self.bufferedAmount += len(data)


def test_a_peer_that_stops_reading_is_dropped_at_the_bound():
    reasons: list[str] = []
    sender = ChannelSender(1000, reasons.append)
    channel = Channel()
    sender.attach(channel)
    for _ in range(9):
        sender.send("x" * 100)
    assert len(channel.sent) == 9 and not reasons
    with pytest.raises(ConnectionError):
        sender.send("x" * 200)
    assert len(channel.sent) == 9 and reasons == ["900 bytes unsent on the data channel"]
    with pytest.raises(ConnectionError):  # stays dropped: no second report
        sender.send("x")
    assert len(reasons) == 1


def test_a_reading_peer_is_never_dropped():
    sender = ChannelSender(1000, lambda reason: pytest.fail(reason))
    channel = Channel()
    sender.attach(channel)
    for _ in range(100):
        sender.send("x" * 100)
        channel.bufferedAmount = 0  # acknowledged
    assert len(channel.sent) == 100


def test_events_before_the_channel_opens_are_kept_in_order_and_bounded():
    reasons: list[str] = []
    sender = ChannelSender(250, reasons.append)
    sender.send("a" * 100)
    sender.send("b" * 100)
    channel = Channel(state="connecting")
    sender.attach(channel)
    assert not channel.sent
    channel.readyState = "open"
    sender.flush()
    assert channel.sent == ["a" * 100, "b" * 100]
    channel.bufferedAmount = 0
    pending = ChannelSender(250, reasons.append)
    pending.send("a" * 200)
    with pytest.raises(ConnectionError):
        pending.send("b" * 100)
    assert reasons == ["200 bytes unsent on the data channel"]
