"""The admin API's list info, list upload and audit search routes, on the real Redis."""

from __future__ import annotations

import csv
import gzip
import io
import json
import resource
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from gate.config.loader import AuditConfig
from gate.core.errors import StoreUnavailable
from gate.ops import api, scrubfile
from gate.ops.audit import AuditLog
from gate.store.lists import ListStore
from tests.ops.conftest import AUTH, Served

LISTED = "+33699001122"
UNLISTED = "+33612345678"


async def upload(
    served: Served, path: str, data: bytes, content_type: str = "text/csv"
) -> tuple[int, list[dict[str, Any]] | dict[str, Any], str]:
    """POST a file; the answer's JSON Lines (or its one error object) and its media type."""
    headers = {**AUTH, "Content-Type": content_type}
    async with served.session.post(served.url + path, data=data, headers=headers) as response:
        text = await response.text()
        kind = response.content_type
    if kind == "application/x-ndjson":
        return response.status, [json.loads(line) for line in text.splitlines()], kind
    return response.status, json.loads(text), kind


async def test_list_info_is_typed_without_internals(served: Served) -> None:
    """GET a list after an upload: integers, RFC 3339 times, no bits/version/count."""
    await upload(served, "/v1/lists/red/import?refreshed_at=2026-11-01T00:00:00Z", b"0612345678\n")
    status, info = await served.get("/v1/lists/red")
    imported_at = info.pop("imported_at")
    assert 200 == status
    assert {
        "name": "red",
        "kind": "block",
        "scope": "tenant",
        "tenant": "default",
        "campaign": None,
        "entries": 1,
        "hashed": True,
        "refreshed_at": "2026-11-01T00:00:00Z",
        "source": "upload",
        "importer": info["importer"],
        "sha256": None,
        "unfinished_switch": None,
    } == info
    assert (True, True) == (imported_at.endswith("Z"), info["importer"].startswith("api@"))


@pytest.mark.timeout(60)
async def test_a_cut_off_switch_is_told_by_the_list_and_the_lists_page(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload in replace mode cut off while switching (a failover): GET /v1/lists/red
    and GET /v1/lists (the console's Lists page) carry unfinished_switch, whose note says
    what the figures are and to import again in replace mode; an upload in replace mode
    completes the switch, and it is null again."""
    replace = "/v1/lists/red/import?mode=replace"
    await upload(served, replace, b"0612345678\n")

    async def cut_off(self: ListStore, *args: Any) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    with monkeypatch.context() as patched:
        patched.setattr(ListStore, "_switched", cut_off)
        await upload(served, replace, b"0612345679\n0612345680\n")
    _, info = await served.get("/v1/lists/red")
    _, page = await served.get("/v1/lists")
    await upload(served, replace, b"0612345679\n0612345680\n")
    _, settled = await served.get("/v1/lists/red")
    _, settled_page = await served.get("/v1/lists")
    (row,) = [row for row in page["lists"] if row["name"] == "red"]
    (settled_row,) = [row for row in settled_page["lists"] if row["name"] == "red"]
    assert {
        "version": 2,
        "deciding_groups": 1024,
        "slot_groups": 1024,
        "source": "upload",
        "note": "an import's switch to version 2 is unfinished (under way, or cut off by a "
        "failover): 1024 of 1024 slot groups decide with it; entries counts what decides, "
        "but refreshed_at, imported_at, source, importer and sha256 are still the previous "
        "import's, and the list cannot be exported; when no import is running, import the "
        "list again in replace mode, e.g. that import's file (source 'upload'), which "
        "completes the switch first",
    } == info["unfinished_switch"]
    assert (2, info["unfinished_switch"]) == (info["entries"], row["info"]["unfinished_switch"])
    assert (None, None) == (
        settled["unfinished_switch"], settled_row["info"]["unfinished_switch"]
    )  # fmt: skip


async def test_an_upload_is_imported_with_progress_and_rejects(served: Served) -> None:
    """A gzip list file: progress events, each rejected line, then the counts; the numbers
    are on the list at once."""
    body = gzip.compress(b"0612345678\n06 99 00 11 22\nnot a number\n0612345678\n")
    status, events, kind = await upload(served, "/v1/lists/red/import", body, "application/gzip")
    assert isinstance(events, list)
    check = await served.post("/v1/check", {"number": LISTED})
    assert (200, "application/x-ndjson") == (status, kind)
    assert {"progress", "rejected", "done"} == {e["event"] for e in events}
    rejected = [(e["line"], e["why"][:21]) for e in events if e["event"] == "rejected"]
    done = events[-1]
    assert [(3, "number 'not a number'")] == rejected
    assert ("done", 2, 1, 1, 4, 4) == (
        done["event"],
        done["imported"],
        done["duplicates"],
        done["rejected"],
        done["lines"],
        done["total"],
    )
    assert "listed:red" == check[1]["reason"]


async def test_an_upload_reads_quoted_multi_line_csv(served: Served) -> None:
    """A CSV upload with a quoted field spanning lines imports its phone column."""
    text = 'name,phone\n"Dupont\nJean",0699001122\nMartin,0612345678\n'
    status, events, _ = await upload(served, "/v1/lists/red/import?column=phone", text.encode())
    assert isinstance(events, list)
    assert (200, 2, 0) == (status, events[-1]["imported"], events[-1]["rejected"])


async def test_an_upload_replace_makes_the_file_the_whole_list(served: Served) -> None:
    """mode=replace: after it, only the file's numbers are listed."""
    await served.post("/v1/lists/red/add", {"numbers": [UNLISTED]})
    status, events, _ = await upload(served, "/v1/lists/red/import?mode=replace", b"0699001122\n")
    listed = await served.post("/v1/check", {"number": LISTED})
    gone = await served.post("/v1/check", {"number": UNLISTED})
    assert (200, "done") == (status, events[-1]["event"])  # type: ignore[index]
    assert ("listed:red", "allowed") == (listed[1]["reason"], gone[1]["reason"])


async def test_an_upload_replace_that_would_empty_the_list_is_refused(served: Served) -> None:
    """mode=replace of a file whose every line is rejected: an ``error`` event saying what
    to do, the list kept; with allow_empty=true the list is emptied."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED]})
    wrong = b"name,phone\nAlice,0612345640\n"
    refused = await upload(served, "/v1/lists/red/import?mode=replace", wrong)
    kept = await served.post("/v1/check", {"number": LISTED})
    allowed = await upload(served, "/v1/lists/red/import?mode=replace&allow_empty=true", wrong)
    gone = await served.post("/v1/check", {"number": LISTED})
    assert isinstance(refused[1], list)
    assert isinstance(allowed[1], list)
    assert (200, "error") == (refused[0], refused[1][-1]["event"])
    assert refused[1][-1]["why"].endswith("or pass allow_empty=true to empty the list")
    assert ("listed:red", "done", "allowed") == (
        kept[1]["reason"],
        allowed[1][-1]["event"],
        gone[1]["reason"],
    )


@pytest.mark.parametrize(
    ("path", "content_type", "expected"),
    [
        (
            "/v1/lists/red/import",
            "text/plain",
            (
                415,
                "Content-Type 'text/plain': send text/csv or text/tab-separated-values or "
                "application/octet-stream or application/gzip or application/zip",
            ),
        ),
        (
            "/v1/lists/red/import?format=fr-scrub",
            "text/csv",
            (
                400,
                "format fr-scrub needs the results to keep: set keep=RESULT (the result "
                "value of numbers that may be called, as written in the file)",
            ),
        ),
        (
            "/v1/lists/red/import?mode=merge",
            "text/csv",
            (400, "mode: must be 'add', 'remove' or 'replace', got 'merge'"),
        ),
        (
            "/v1/lists/camp/import",
            "text/csv",
            (400, "list 'camp' is per campaign: set campaign"),
        ),
        (
            "/v1/lists/nope/import",
            "text/csv",
            (404, "list 'nope' is not in the config or its packs"),
        ),
        (
            "/v1/lists/red/import?column=3",
            "text/csv",
            (
                400,
                "the upload:1: no column 3 (column 3): the file's first row has 1 column; "
                "give column 1, or a header name",
            ),
        ),
    ],
)
async def test_a_bad_upload_is_refused_before_anything_is_imported(
    served: Served, path: str, content_type: str, expected: tuple[int, str]
) -> None:
    """Wrong media type, format options, mode, scope or list, a column past the file's:
    one JSON error, list empty."""
    status, body, _ = await upload(served, path, b"0699001122\n", content_type)
    assert isinstance(body, dict)
    assert expected == (status, body["error"])
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


TRUNCATED_GZIP = gzip.compress(b"0699001122\n" * 100)[:20]


@pytest.mark.parametrize("path", ["/v1/lists/red/import", "/v1/scrub/file"])
@pytest.mark.parametrize(
    ("data", "content_type", "error"),
    [
        (
            TRUNCATED_GZIP,
            "application/gzip",
            "the upload: cannot read: Compressed file ended before the end-of-stream "
            "marker was reached",
        ),
        (b"PK\x03\x04garbage", "application/zip", "the upload: cannot read: "),
        (b"\xff\xfe\x00+336\n", "text/csv", "the upload: not UTF-8 text but UTF-16; save"),
    ],
    ids=["gzip", "zip", "not-utf8"],
)
async def test_an_unreadable_upload_is_named_the_upload_not_by_a_server_path(
    served: Served, path: str, data: bytes, content_type: str, error: str
) -> None:
    """A truncated gzip, a broken zip or a file that is not UTF-8: the error (a 400, or the
    stream's ``error`` event when found past the first lines) names "the upload", never
    the temporary file the server spooled it to."""
    _, body, _ = await upload(served, path, data, content_type)
    message = body["error"] if isinstance(body, dict) else body[-1]["why"]
    assert (True, False) == (message.startswith(error), "callgate-upload-" in message), message


def _zip_of(lines: bytes, method: int = zipfile.ZIP_DEFLATED, flags: int = 0) -> bytes:
    """A zip of one member ``a.txt`` holding ``lines``; ``method`` and ``flags`` written
    into its headers afterwards (as another zip tool would: deflate64, encryption)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.txt", lines)
    data = bytearray(out.getvalue())
    central = data.rfind(b"PK\x01\x02")
    for flag_at, method_at in ((6, 8), (central + 8, central + 10)):
        data[flag_at] |= flags
        data[method_at : method_at + 2] = method.to_bytes(2, "little")
    return bytes(data)


def _corrupt(data: bytes, start: int) -> bytes:
    """``data`` with 20 bytes from ``start`` inverted (compressed data no longer valid)."""
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 20]) + data[start + 20 :]


def _deflated_zip(lines: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", lines)
    return out.getvalue()


LINES = b"0699001122\n0699001123\n" * 100


@pytest.mark.parametrize("path", ["/v1/lists/red/import", "/v1/scrub/file"])
@pytest.mark.parametrize(
    ("data", "content_type", "error"),
    [
        (
            _corrupt(gzip.compress(LINES), 20),
            "application/gzip",
            "the upload: cannot read: its compressed data is corrupt (Error -3 while "
            "decompressing data: invalid distance too far back): compress the file again, "
            "or send it uncompressed",
        ),
        (
            _corrupt(_deflated_zip(LINES), 40),
            "application/zip",
            "the upload: cannot read: its compressed data is corrupt (Error -3 while "
            "decompressing data: invalid distance too far back): compress the file again, "
            "or send it uncompressed",
        ),
        (
            _zip_of(LINES, flags=0x1),
            "application/zip",
            "the upload: zip member 'a.txt' is encrypted: zip it again without a password",
        ),
        (
            _zip_of(LINES, method=9),
            "application/zip",
            "the upload: zip member 'a.txt' is compressed by method 9, which callgate "
            "cannot read: zip it again with stored, deflate, bzip2, lzma (or send it as "
            "plain text or gzip)",
        ),
    ],
    ids=["gzip-corrupt", "zip-corrupt", "zip-encrypted", "zip-deflate64"],
)
async def test_an_upload_that_cannot_be_decompressed_is_400_saying_why(
    served: Served, path: str, data: bytes, content_type: str, error: str
) -> None:
    """Corrupt deflate data (zlib.error), an encrypted zip member (RuntimeError) or one
    compressed by a method zipfile cannot read (NotImplementedError, e.g. Windows'
    deflate64): a 400 naming the upload and what to do, not a 500; nothing imported."""
    status, body, _ = await upload(served, path, data, content_type)
    assert (400, {"error": error}) == (status, body)
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


@pytest.mark.parametrize("path", ["/v1/lists/red/import", "/v1/scrub/file"])
async def test_a_compression_bomb_is_refused_past_the_upload_bound_decompressed(
    served: Served, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload that decompresses to more than ``MAX_UPLOAD_BYTES`` (here 100 000: a
    gzip of 1 GB of list lines is 10 MB) is a 400 saying so, before anything is imported
    or scrubbed: it was read whole, as often as the import or scrub reads it."""
    monkeypatch.setattr(api, "MAX_UPLOAD_BYTES", 100_000)
    monkeypatch.setattr(scrubfile, "MAX_UPLOAD_BYTES", 100_000)
    bomb = gzip.compress(b"0699001122\n" * 10_000)  # 110 000 bytes decompressed
    status, body, _ = await upload(served, path, bomb, "application/gzip")
    assert (400, {"error": "the upload: more than 100000 bytes decompressed (a compression "
        "bomb?): split the file into smaller ones, or read it with the callgate command"},
    ) == (status, body)  # fmt: skip
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


@pytest.mark.parametrize("path", ["/v1/lists/red/import", "/v1/scrub/file"])
async def test_an_upload_the_server_disk_cannot_hold_is_503_saying_so(
    served: Served, path: str
) -> None:
    """An upload whose spooling fails (here a file size limit of 64 KiB: EFBIG, as a full
    disk gives ENOSPC) is a 503 saying what to do, not a 500 and a logged traceback."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # Python ignores SIGXFSZ
    try:
        status, body, _ = await upload(served, path, b"0699001122\n" * 20_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (503, {"error": "the upload cannot be kept on the server's disk (File too large): "
        "free space where callgate keeps temporary files (TMPDIR), then send it again"},
    ) == (status, body)  # fmt: skip


@pytest.fixture
async def audited(served: Served) -> AsyncIterator[Served]:
    """``served`` keeping the evidence of recorded decisions in the audit stream."""
    audit = AuditLog(served.gate.store.admin_client, "callgate", AuditConfig())
    served.gate.observers.append(audit)
    audit.start()
    yield served
    served.gate.observers.remove(audit)
    await audit.close()


async def record_three(audited: Served) -> None:
    """Three recorded checks now: LISTED (BLOCK), UNLISTED (ALLOW), LISTED (BLOCK)."""
    await audited.post("/v1/lists/red/add", {"numbers": [LISTED]})
    for number in (LISTED, UNLISTED, LISTED):
        await audited.post("/v1/check", {"number": number, "record": True})
    audit = next(o for o in audited.gate.observers if isinstance(o, AuditLog))
    await audit.close()  # flushed
    audit.start()


async def get_text(served: Served, path: str) -> tuple[int, str, str]:
    async with served.session.get(served.url + path, headers=AUTH) as response:
        return response.status, response.content_type, await response.text()


async def test_audit_search_finds_every_decision_about_a_number(audited: Served) -> None:
    """GET /v1/audit?number=…: that number's decisions, typed, as JSON Lines."""
    await record_three(audited)
    status, kind, text = await get_text(audited, "/v1/audit?number=06%2099%2000%2011%2022")
    records = [json.loads(line) for line in text.splitlines()]
    assert (200, "application/x-ndjson") == (status, kind)
    assert [("BLOCK", "listed:red", "api")] * 2 == [
        (r["verdict"], r["reason"], r["door"]) for r in records
    ]
    assert ({int}, {True}) == (
        {type(r["latency_us"]) for r in records},
        {r["time"].endswith("Z") for r in records},
    )


async def test_audit_search_by_time_range_as_csv(audited: Served) -> None:
    """since/until select by time; format=csv has a header and one row per decision."""
    await record_three(audited)
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    around = f"since={(now - hour):%Y-%m-%dT%H:%M:%SZ}&until={(now + hour):%Y-%m-%dT%H:%M:%SZ}"
    later = f"since={(now + hour):%Y-%m-%dT%H:%M:%SZ}"
    status, kind, text = await get_text(audited, f"/v1/audit?{around}&format=csv")
    _, _, none = await get_text(audited, f"/v1/audit?{later}&format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (200, "text/csv") == (status, kind)
    assert ["listed:red", "allowed", "listed:red"] == [row["reason"] for row in rows]
    assert [] == list(csv.DictReader(io.StringIO(none)))


async def test_audit_csv_writes_a_caller_id_that_starts_like_a_formula_as_text(
    audited: Served,
) -> None:
    """format=csv: a caller ID starting with =, +, -, @, tab or CR gets a leading ' (OWASP
    CSV injection), but for a plain international number; the JSON Lines keep it as
    given."""
    given = [
        '=HYPERLINK("http://x","y")',
        "+3+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1)",
        "\t=1",
        "\r=1",
    ]
    for caller_id in [*given, "+33612345678"]:
        await audited.post(
            "/v1/check", {"number": UNLISTED, "record": True, "caller_id": caller_id}
        )
    audit = next(o for o in audited.gate.observers if isinstance(o, AuditLog))
    await audit.close()
    audit.start()
    _, _, text = await get_text(audited, "/v1/audit?format=csv")
    _, _, lines = await get_text(audited, "/v1/audit")
    assert (["'" + c for c in given] + ["+33612345678"], [*given, "+33612345678"]) == (
        [row["caller_id"] for row in csv.DictReader(io.StringIO(text, newline=""))],
        [json.loads(line)["caller_id"] for line in lines.splitlines()],
    )


# One audit entry with a value that starts like a formula in every text field, written
# straight into the stream (the doors refuse most of these; the export must not rely on
# it), with E.164 numbers that must stay as they are; and its row in a CSV export.
HOSTILE_ENTRY = {
    "ts": "1796000000000",
    "verdict": "ALLOW",
    "reason": "-2+3",
    "rule": "+cmd|' /C calc'!A0",
    "door": "=1+1",
    "tenant": "@SUM(1)",
    "campaign": '=HYPERLINK("http://x","y")',
    "trunk": "\r=1",
    "class": "\t=1",
    "number": "+33612345678",
    "caller_id": "+33699001122",
    "channel": "-1",
    "config": "@v1",
    "packs": "=fr@1",
    "lists": "@red@3",
    "counters": "+cap=2",
    "shadow": "-x",
    "latency_us": "90",
}
HOSTILE_CSV = {
    "verdict": "ALLOW",
    "reason": "'-2+3",
    "rule": "'+cmd|' /C calc'!A0",
    "door": "'=1+1",
    "tenant": "'@SUM(1)",
    "campaign": '\'=HYPERLINK("http://x","y")',
    "trunk": "'\r=1",
    "class": "'\t=1",
    "number": "+33612345678",
    "caller_id": "+33699001122",
    "channel": "'-1",
    "config_version": "'@v1",
    "packs": "'=fr@1",
    "lists": "'@red@3",
    "counters": "'+cap=2",
    "shadow": "'-x",
    "retry_after_s": "",
    "latency_us": "90",
    "redis_us": "0",
}


def write_hostile_entry(url: str, stream: str) -> None:
    """``HOSTILE_ENTRY`` appended to ``stream`` (an audit stream) of the Redis at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        client.xadd(stream, dict(HOSTILE_ENTRY))
    finally:
        client.close()


def csv_cells(text: str) -> list[dict[str, str]]:
    """The rows of a CSV export, read back with the csv module, without id and time."""
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return [{k: v for k, v in row.items() if k not in ("id", "time")} for row in rows]


async def test_audit_csv_writes_every_text_cell_that_starts_like_a_formula_as_text(
    audited: Served, redis_url: str
) -> None:
    """format=csv: any text cell (tenant, campaign, reason, rule, packs…) starting with =,
    +, -, @, tab or CR gets a leading ' (OWASP CSV injection); a number and caller ID in
    E.164 are kept, and the csv module reads the row back whole; the JSON Lines keep the
    values as stored."""
    write_hostile_entry(redis_url, audited.gate.keyspace.audit_key(0))
    _, _, text = await get_text(audited, "/v1/audit?format=csv")
    _, _, lines = await get_text(audited, "/v1/audit")
    record = json.loads(lines)
    assert [HOSTILE_CSV] == csv_cells(text)
    assert (HOSTILE_ENTRY["campaign"], HOSTILE_ENTRY["tenant"], {"@red": 3}) == (
        record["campaign"],
        record["tenant"],
        record["lists"],
    )


async def test_audit_search_refuses_a_bad_filter(audited: Served) -> None:
    """An unknown parameter or a bad time: 400 naming it."""
    unknown = "colour: unknown query parameter; use number, since, until, tenant, campaign, "
    assert (400, {"error": unknown + "verdict, format, limit"}) == (
        await audited.get("/v1/audit?colour=red")
    )
    assert (400, {"error": "verdict: must be 'ALLOW', 'BLOCK' or 'DEFER', got 'MAYBE'"}) == (
        await audited.get("/v1/audit?verdict=MAYBE")
    )


async def test_audit_search_refuses_an_inverted_range_and_searches_a_removed_tenant(
    audited: Served,
) -> None:
    """until before since: 400 saying so, not an empty 200. A tenant the configuration no
    longer names is searched all the same (its entries are kept evidence): 200."""
    status, _, _ = await get_text(audited, "/v1/audit?tenant=gone")
    inverted = await audited.get("/v1/audit?since=2026-12-02T00:00:00Z&until=2026-11-01T00:00:00Z")
    assert (200, 400) == (status, inverted[0])
    assert inverted[1]["error"] == (
        "the time range ends before it starts: until 2026-11-01T00:00:00+00:00 is before"
        " since 2026-12-02T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/lists/red?tenant=default&tenant=bogus", "tenant"),
        ("/v1/lists/red/import?mode=add&mode=replace", "mode"),
        ("/v1/audit?verdict=ALLOW&verdict=BLOCK", "verdict"),
        ("/v1/scrub/file?column=1&column=2", "column"),
    ],
)
async def test_a_query_parameter_given_twice_is_400_naming_it(
    served: Served, path: str, name: str
) -> None:
    """Which of two values was meant is not guessed: 400 naming the parameter, and an
    import so refused imports nothing."""
    if "/import" in path or "/scrub/" in path:
        status, body, _ = await upload(served, path, b"0699001122\n")
    else:
        status, body = await served.get(path)
    assert (400, {"error": f"{name}: given more than once; give it once"}) == (status, body)
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


@pytest.mark.parametrize(
    ("path", "body", "name"),
    [
        ("/v1/lists/red/add", b'{"numbers": ["0699001122"], "numbers": ["0611111111"]}', "numbers"),
        ("/v1/check", b'{"number": "0699001122", "tenant": "acme", "tenant": "globex"}', "tenant"),
    ],
)
async def test_a_json_member_given_twice_is_400_naming_it(
    served: Served, path: str, body: bytes, name: str
) -> None:
    """A body's key given twice is refused as a repeated query parameter is (which value
    was meant is not guessed, whatever a proxy before the gate read), and changes nothing."""
    status, answer, _ = await upload(served, path, body, content_type="application/json")
    assert (400, {"error": f"{name}: given more than once; give it once"}) == (status, answer)
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


async def test_every_api_answer_is_sent_nosniff_with_a_policy_of_none(audited: Served) -> None:
    """A JSON answer, the CSV and JSON Lines audit exports and an error (opened in a
    browser by a link) carry nosniff and a policy that runs, loads and frames nothing: they
    had neither, unlike the console's pages."""
    await record_three(audited)
    wanted = ("nosniff", "default-src 'none'; frame-ancestors 'none'")
    found = {}
    for path, auth in [
        ("/v1/lists/red", AUTH),
        ("/v1/audit?format=csv", AUTH),
        ("/v1/audit", AUTH),
        ("/v1/lists/nope", AUTH),
        ("/v1/lists/red?", {}),  # no token: 401
    ]:
        async with audited.session.get(audited.url + path, headers=auth) as response:
            headers = response.headers
            found[path] = (
                response.status,
                response.content_type,
                headers.get("X-Content-Type-Options"),
                headers.get("Content-Security-Policy"),
            )
    assert {
        "/v1/lists/red": (200, "application/json", *wanted),
        "/v1/audit?format=csv": (200, "text/csv", *wanted),
        "/v1/audit": (200, "application/x-ndjson", *wanted),
        "/v1/lists/nope": (404, "application/json", *wanted),
        "/v1/lists/red?": (401, "application/json", *wanted),
    } == found
