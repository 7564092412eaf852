"""A minimal FastAGI gate: the floor ``bench/e2e.py --minimal`` sets callgate's doors against.

    python bench/minimal_agi.py PORT REDIS_URL

Per call, what any FastAGI gate must do and nothing more: read the AGI headers, one
SISMEMBER of the dialled number (``agi_arg_1``) in the set ``minimal:red``, one
``SET VARIABLE CALLGATE_RESULT ALLOW|BLOCK``, read Asterisk's answer, close. No rules, no
hours, no caps, no audit. On uvloop, as ``callgate run`` serves by default. Prints
``ready`` once it listens on 127.0.0.1:PORT; stops on SIGTERM or SIGINT.

Asked the way callgate's own ``callgate-agi`` subroutine asks (``check?number=…&…`` in
``agi_network_script``; or ``agi_arg_1: number=…``),
it answers as callgate does instead, one ``SET VARIABLE CALLGATE_DECISION
"ALLOW|allowed||||…|0"`` (or BLOCK) for the subroutine to unpack: the same gate work
behind callgate's dialplan, whose own cost that row then shows.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import redis.asyncio as aioredis
import uvloop

_ARG = b"agi_arg_1: "
_SCRIPT = b"agi_network_script: "
_NUMBER = b"number="  # callgate-agi's first parameter


async def serve(port: int, url: str) -> None:
    client = aioredis.Redis.from_url(url)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            number = b""
            while (line := await reader.readline()) not in (b"", b"\n"):
                if line.startswith(_ARG):
                    number = line[len(_ARG) :].strip()
                elif line.startswith(_SCRIPT) and b"?" in line:  # check?number=…&tenant=…
                    number = line.split(b"?", 1)[1].split(b"&", 1)[0].strip()
            subroutine = number.startswith(_NUMBER)
            if subroutine:
                number = number[len(_NUMBER) :]
            listed = await client.sismember("minimal:red", number)  # type: ignore[misc]
            verdict = b"BLOCK" if listed else b"ALLOW"
            if subroutine:
                value = b"%s|%s||||%s|%s" % (
                    verdict,
                    b"listed" if listed else b"allowed",
                    number,
                    b"21" if listed else b"0",
                )
                writer.write(b'SET VARIABLE CALLGATE_DECISION "%s"\n' % value)
            else:
                writer.write(b"SET VARIABLE CALLGATE_RESULT %s\n" % verdict)
            await reader.readline()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    await client.aclose()


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        print("usage: python bench/minimal_agi.py PORT REDIS_URL", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(sys.argv[1]), sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
