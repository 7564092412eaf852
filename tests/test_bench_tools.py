"""The benchmarks' own arithmetic: what bench/e2e.py and bench/pyspy.py print is computed
right (the figures in the README and the closing notes come from them)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    """A bench script as a module (they are scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def e2e() -> ModuleType:
    return load("e2e")


@pytest.fixture(scope="module")
def pyspy() -> ModuleType:
    return load("pyspy")


def test_a_profile_summary_counts_self_time_inclusive_frames_and_areas(
    pyspy: ModuleType, tmp_path: Path
) -> None:
    """Self time goes to the leaf frame (line numbers merged), callgate's frames count
    inclusively, areas by path, busy = samples / (seconds x rate)."""
    raw = tmp_path / "agi-100.pyspy"
    loop = "run (/x/python3.11/asyncio/events.py:80)"
    serve = "_serve (/x/agi/server.py:300)"
    raw.write_text(
        f"process 1:main;{loop};{serve};add (/x/gate/store/client.py:1350) 3\n"
        f"process 1:main;{loop};{serve};add (/x/gate/store/client.py:1360) 1\n"
        f"process 1:main;{loop};select (/x/python3.11/selectors.py:468) 4\n"
        "garbage line\n"
    )
    raw.with_suffix(".seconds").write_text(f"{8 / pyspy.RATE_HZ / 0.5}\n")  # busy 50 %
    lines = pyspy.summary(raw)
    assert "agi-100.pyspy: 8 samples, busy 50 % of one core" in lines[0]
    assert lines[2].split() == ["50.0", "add", "(store/client.py)"]
    assert lines[3].split() == ["50.0", "select", "(python3.11/selectors.py)"]
    assert ["50.0", "_serve", "(agi/server.py)"] in [line.split() for line in lines]
    assert lines[-1] == "  by area: gate.store 50 %, python stdlib 50 %"


def test_goal_lines_set_each_door_against_ungated_and_the_minimal_gate(e2e: ModuleType) -> None:
    """Added p50 and ratios per door, the 100 cps verdict, the knee, and each door's added
    delay over the minimal FastAGI gate's (the FastAGI door's split at the minimal gate
    reached through callgate's subroutine)."""
    rows = [
        (100, "ungated", 1000, 1000, 1.0, 2.0),
        (100, "minimal", 1000, 1000, 2.0, 4.0),
        (100, "minsub", 1000, 1000, 2.25, 4.0),
        (100, "agi", 1000, 1000, 3.0, 5.0),
        (100, "stasis", 1000, 990, 2.2, 5.0),
    ]
    lines = e2e.goal_lines(rows, [100])
    assert lines[1].split() == ["100", "minimal", "+1.00ms", "2.00x", "2.00x", "6.00ms", "0.0%"]
    assert lines[2].split() == ["100", "minsub", "+1.25ms", "2.25x", "2.00x", "6.00ms", "0.0%"]
    assert lines[3].split() == ["100", "agi", "+2.00ms", "3.00x", "2.50x", "6.00ms", "0.0%"]
    assert not any(line.startswith("goal 100 cps minsub") for line in lines)
    assert "goal 100 cps agi: added p50 2.00 ms (<= 1.5), p99 5.00 ms (<= 6.00): NOT met" in lines
    assert "goal 100 cps stasis: added p50 1.20 ms (<= 1.5), p99 5.00 ms (<= 6.00): met" in lines
    assert any(line.startswith("knee minimal: holds up to 100 cps") for line in lines)
    assert any(line.startswith("knee agi: fails at every rate tried") for line in lines)
    assert (
        "100 cps agi: added p50 2.00 ms, the minimal FastAGI gate's 1.00 ms: +1.00 ms over it"
        " (the minimal gate through callgate-agi 1.25 ms: the subroutine +0.25 ms, the gate's"
        " own +0.75 ms)" in lines
    )
    assert (
        "100 cps stasis: added p50 1.20 ms, the minimal FastAGI gate's 1.00 ms: +0.20 ms over it"
        in lines
    )


def test_unanswered_calls_are_counted_by_final_response(e2e: ModuleType) -> None:
    """A call without a 200 counts under its final response, or "none" when SIPp got none
    (a 503 is the dialplan's DEFER or fail mode; no answer is an overloaded box)."""
    results = {"0601": 200, "0602": 503, "0603": 503, "0604": 480}
    counts = e2e.unanswered(results, ["0601", "0602", "0603", "0604", "0605"])
    assert counts == {"503": 2, "480": 1, "none": 1}
    assert e2e.unanswered_text(counts) == "503 x2, 480 x1, none x1"
    assert e2e.unanswered_text(e2e.unanswered(results, ["0601"])) == "-"


def test_the_knee_names_where_calls_fail_and_how_many_failed_ungated(e2e: ModuleType) -> None:
    """A rate where 1 % or more fail is named with the ungated calls' failures at that rate
    (the box's limit, not the gate's); a door that fails at every rate says so, never
    "up to 0 cps"."""
    rows = [
        (300, "ungated", 1000, 1000, 1.0, 2.0),
        (300, "agi", 1000, 1000, 1.8, 3.0),
        (300, "stasis", 1000, 980, 1.5, 3.0),
        (500, "ungated", 1000, 965, 1.0, 2.0),
        (500, "agi", 1000, 955, 2.5, 4.0),
        (500, "stasis", 1000, 950, 2.5, 4.0),
    ]
    lines = e2e.goal_lines(rows, [300, 500])
    assert "ungated: fewer than 1 % failed up to 300 cps; at 500 cps 3.5 % failed" in lines
    assert (
        "knee agi: holds up to 300 cps (< 1 % failed, p50 <= 2x ungated); fewer than 1 % failed"
        " up to 300 cps; at 500 cps 4.5 % failed, ungated 3.5 %" in lines
    )
    assert (
        "knee stasis: fails at every rate tried (< 1 % failed, p50 <= 2x ungated); 1 % or more"
        " failed at every rate tried; at 300 cps 2.0 % failed, ungated 0.0 %" in lines
    )


def test_dialplan_priorities_are_counted_per_channel_in_the_named_contexts(
    e2e: ModuleType,
) -> None:
    """Each ``Executing [exten@context:n]`` line of a named context counts for its channel;
    other contexts and other lines do not."""
    log = "\n".join(
        [
            '[Dec  1] VERBOSE[9][C-1] pbx.c: -- Executing [s@callgate-agi:1] Set("PJSIP/a-1", '
            '"ARRAY(CALLGATE_DECISION,CALLGATE_RESULT)=") in new stack',
            '[Dec  1] VERBOSE[9][C-1] pbx.c: -- Executing [s@callgate-agi:2] AGI("PJSIP/a-1", '
            '"agi://127.0.0.1:4573/check") in new stack',
            '[Dec  1] VERBOSE[9][C-2] pbx.c: -- Executing [s@callgate-agi:1] Set("PJSIP/b-2", '
            '"x=") in new stack',
            '[Dec  1] VERBOSE[9][C-1] pbx.c: -- Executing [0612@reached:1] Answer("PJSIP/a-1", '
            '"") in new stack',
            "[Dec  1] NOTICE[9][C-1] Executing [s@callgate-agi:3] is not a verbose line",
        ]
    )
    assert {"PJSIP/a-1": 2, "PJSIP/b-2": 1} == e2e.count_priorities(log, ("callgate-agi",))
    assert {"PJSIP/a-1": 1} == e2e.count_priorities(log, ("reached",))


def test_cpu_time_is_read_for_a_process_and_its_children(e2e: ModuleType) -> None:
    """This process has used some CPU; no process, none."""
    assert e2e.tree_cpu_s(os.getpid()) > 0
    assert e2e.tree_cpu_s(None) == 0.0


def test_rest_calls_are_counted_over_http_and_over_the_websocket(e2e: ModuleType) -> None:
    """Asterisk's ARI debug log: a REST request over HTTP and one over the event WebSocket
    both count for the channel they name; the probe names none."""
    log = (
        "[t] VERBOSE[1] res_ari.c: <--- ARI request received from: 127.0.0.1:1 --->\n"
        "DELETE channels/c1?reason_code=21\nHost: x\n\n"
        "[t] VERBOSE[2] ari/ari_websocket_requests.c: <--- Received ARI message from "
        "127.0.0.1:2 --->\n"
        '{\n  "type": "RESTRequest",\n  "method": "POST",\n  "uri": "channels/c2/continue"\n}\n'
        "[t] VERBOSE[2] ari/ari_websocket_requests.c: <--- Received ARI message from "
        "127.0.0.1:2 --->\n"
        '{\n  "type": "RESTRequest",\n  "method": "GET",\n  "uri": "asterisk/ping"\n}\n'
    )
    assert ({"c1": 1, "c2": 1}, 1, 2) == e2e.count_rest_calls(log)


def test_a_row_recorded_in_parts_is_summed_into_one_summary(
    pyspy: ModuleType, tmp_path: Path
) -> None:
    """The parts of a row (bench/e2e.py --rounds) count as one profile: samples and
    seconds added."""
    parts = [tmp_path / "agi-100-0.pyspy", tmp_path / "agi-100-1.pyspy"]
    for n, part in enumerate(parts, start=1):
        part.write_text(f"process 1:main;select (/x/python3.11/selectors.py:468) {n}\n")
        part.with_suffix(".seconds").write_text(f"{3 / pyspy.RATE_HZ}\n")
    assert pyspy.summary(parts[0], more=parts[1:])[0] == (
        "agi-100-0.pyspy (+1 more): 3 samples, busy 50 % of one core over 0.0 s"
    )


def test_decide_runs_on_the_cpus_asked_for_and_names_a_wrong_one() -> None:
    decide = load("decide")
    here = sorted(os.sched_getaffinity(0))
    assert decide.cpu_list(str(here[0])) == {here[0]}
    assert decide.cpu_list(",".join(map(str, here))) == set(here)
    with pytest.raises(argparse.ArgumentTypeError, match="expected CPU numbers"):
        decide.cpu_list("0-1")
    with pytest.raises(argparse.ArgumentTypeError, match=f"no CPU {max(here) + 1} here"):
        decide.cpu_list(str(max(here) + 1))


async def test_decide_runs_processes_at_once_and_adds_up_their_decisions(redis_url: str) -> None:
    """``bench/decide.py --processes 2``: two processes started together, each with its own
    share of the numbers and its own trunk, every decision counted once."""
    import importlib

    import redis.asyncio as aioredis

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    decide = importlib.import_module("decide")  # by its name: the processes import it
    numbers = decide.decided_numbers("fr", 40)
    client = aioredis.Redis.from_url(redis_url)
    try:
        rate, redis_us, verdicts = await decide.all_processes(
            redis_url, "lean", numbers, 4, 2, "asyncio", client
        )
        attempts = await client.keys("*")
    finally:
        await client.aclose()
    assert {"allowed": 40} == dict(verdicts)
    assert rate > 0
    assert redis_us > 0
    assert attempts  # the decisions were recorded in this Redis


async def test_decide_says_when_one_of_its_processes_fails(redis_url: str) -> None:
    """A process of ``--processes`` that fails (here: a scenario it does not know) ends the
    benchmark at once with one line, instead of leaving it waiting for its result."""
    import importlib
    import time

    import redis.asyncio as aioredis

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    decide = importlib.import_module("decide")
    client = aioredis.Redis.from_url(redis_url)
    started = time.monotonic()
    try:
        with pytest.raises(SystemExit, match=r"a process failed \(exit code 1\)"):
            await decide.all_processes(
                redis_url, "no-such-scenario", ["+33612345678"] * 4, 1, 2, "asyncio", client
            )
    finally:
        await client.aclose()
    assert time.monotonic() - started < decide.PROCESS_START_S / 2


async def test_decide_times_decisions_with_busy_polling_off_and_on(redis_url: str) -> None:
    """``bench/decide.py``'s busy-polling line: sequential decisions timed in rounds with the
    store's polling off and on (the bench asserts that the store polled when on)."""
    import importlib

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    decide = importlib.import_module("decide")
    measured = await decide.polling(redis_url, 50)
    assert set(measured) == {False, True}
    for rate, p50, cpu in measured.values():
        assert rate > 0
        assert p50 > 0
        assert cpu >= 0


def test_decide_refuses_a_negative_process_count() -> None:
    """``--processes -1``: one line naming the option, before any server starts."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCH / "decide.py"), "--processes", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("--processes -1: give 0 (none) or more")
    assert "event loop" not in done.stdout
