"""The Stasis door's pure parts: events and channel listings in, channels out (and the
decision of a channel whose event could not be read)."""

from __future__ import annotations

from typing import Any

from gate.config.loader import AriConfig
from gate.service import Gate
from gate.stasis.door import StasisChannel, StasisGate, parse_app_data, parse_stasis_start

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


def test_channel_fields_that_are_not_objects_are_read_as_absent() -> None:
    """A caller or dialplan that is not a JSON object (a broken Asterisk or proxy) yields
    a channel without a caller ID or extension, never an exception that would end the
    connection (and, in a listing, every reconnect's sweep)."""
    for odd in ("x", [1], 5):
        broken = {**CHANNEL, "caller": odd, "dialplan": odd}
        event = {"type": "StasisStart", "args": ["0612345678"], "channel": broken}
        channel = parse_stasis_start(event)
        assert channel is not None
        assert ("", "") == (channel.caller_id, channel.extension)
        assert None is parse_app_data(broken, "callgate")


def test_stasis_start_args_that_are_not_a_list_make_a_malformed_channel() -> None:
    """``args`` null, a string or a number: the channel is kept (it must be answered) but
    marked malformed, not read character by character nor as no arguments at all."""
    for odd in (None, "0612345678,tenant=acme", 5, {"number": "0612345678"}):
        channel = parse_stasis_start({"type": "StasisStart", "args": odd, "channel": CHANNEL})
        assert channel is not None
        assert ("args", ()) == (channel.malformed, channel.args)


async def test_a_malformed_stasis_start_is_decided_as_an_error(gate: Gate) -> None:
    """Its number and tenant are unknown: ERROR (the dialplan's fail mode), never a
    decision on the extension under the default tenant."""
    door = StasisGate(gate, AriConfig("http://127.0.0.1:1/ari", "u", "p"))
    channel = parse_stasis_start({"type": "StasisStart", "args": None, "channel": CHANNEL})
    assert channel is not None
    action = await door._decide(channel)
    await door.client.close()
    assert ("ERROR|bad_request:args||||0", None) == (action.value, action.hangup_cause)
