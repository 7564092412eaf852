"""The Stasis door's pure parts: events and channel listings in, channels out."""

from __future__ import annotations

from typing import Any

from gate.stasis.door import StasisChannel, parse_app_data, parse_stasis_start

CHANNEL: dict[str, Any] = {
    "id": "1700000000.42",
    "name": "Local/0612345678@gated-00000001;2",
    "caller": {"name": "", "number": "0140000000"},
    "dialplan": {
        "context": "gated",
        "exten": "0612345678",
        "priority": 3,
        "app_name": "Stasis",
        "app_data": "callgate,0612345678,tenant=acme,class=",
    },
}


def test_stasis_start_gives_the_channel_and_its_arguments() -> None:
    """StasisStart's args (number first, then key=value pairs) are kept in order."""
    event = {"type": "StasisStart", "args": ["0612345678", "campaign=x"], "channel": CHANNEL}
    assert StasisChannel(
        "1700000000.42",
        "Local/0612345678@gated-00000001;2",
        ("0612345678", "campaign=x"),
        "0140000000",
        "0612345678",
    ) == parse_stasis_start(event)


def test_other_events_are_ignored() -> None:
    """StasisEnd, ChannelVarset and malformed events yield no channel."""
    assert [None, None, None] == [
        parse_stasis_start({"type": "StasisEnd", "channel": CHANNEL}),
        parse_stasis_start({"type": "ChannelVarset"}),
        parse_stasis_start({"type": "StasisStart", "channel": "nonsense"}),
    ]


def test_waiting_channels_are_found_by_their_stasis_app_data() -> None:
    """A listed channel in Stasis(callgate,…) yields its arguments from app_data."""
    channel = parse_app_data(CHANNEL, "callgate")
    assert channel is not None
    assert ("0612345678", "tenant=acme", "class=") == channel.args


def test_channels_of_other_apps_or_applications_are_not_ours() -> None:
    """Channels in another Stasis app, or in Dial(), are left alone."""
    other_app = {**CHANNEL, "dialplan": {**CHANNEL["dialplan"], "app_data": "dialer,1"}}
    in_dial = {**CHANNEL, "dialplan": {**CHANNEL["dialplan"], "app_name": "Dial"}}
    assert [None, None] == [
        parse_app_data(other_app, "callgate"),
        parse_app_data(in_dial, "callgate"),
    ]
