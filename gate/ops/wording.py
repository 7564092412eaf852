"""How the API and the console name the options an error is about.

Code every interface shares (list administration, file formats) raises ``OptionError``
(gate/core/errors.py) with the keys of the options it is about; each interface says the
message in its own words: the CLI its flags (gate/cli.py ``CLI_WORDING``), the API its
parameters and fields (``API_WORDING``), the console the labels of its fields
(``CONSOLE_WORDING``; gate/ops/static/console.js). A request authenticated by a console
session is answered in the console's words, any other in the API's. Every wording has a
term for every key (``OPTIONS``; a test holds them to it).
"""

from __future__ import annotations

from gate.core.errors import Term, Wording

__all__ = ["API_WORDING", "CONSOLE_WORDING", "OPTIONS"]

# The keys of the options shared code names.
OPTIONS = frozenset(
    {
        "allow_empty",
        "campaign",
        "column",
        "expires",
        "format",
        "granted_at",
        "keep",
        "list_import",
        "phone_column",
        "refreshed_at",
        "replace",
    }
)

API_WORDING: Wording = {
    "allow_empty": Term("allow_empty", "pass allow_empty=true"),
    "campaign": Term("campaign", "set campaign"),
    "column": Term("column", "set column"),
    "expires": Term("expires", "set expires"),
    "format": Term("format", "set format"),
    "granted_at": Term("granted_at", "set granted_at"),
    "keep": Term("keep", "set keep=RESULT"),
    "list_import": Term(
        "POST /v1/lists/{list}/import", "upload the file to POST /v1/lists/{list}/import"
    ),
    "phone_column": Term("column", "set column"),
    "refreshed_at": Term("refreshed_at", "set refreshed_at"),
    "replace": Term("mode=replace", "set mode=replace"),
}

# The console's labels (console.js ``field(…)``), as its Lists and Scrub pages show them.
CONSOLE_WORDING: Wording = {
    "allow_empty": Term(
        "allow_empty",
        "use callgate list import --replace --allow-empty (the console has no such option)",
    ),
    "campaign": Term("Campaign", "fill in Campaign"),
    "column": Term("CSV column", "fill in CSV column"),
    "expires": Term("Expires", "fill in Expires"),
    "format": Term("Format", "choose a Format"),
    "granted_at": Term("Granted at", "fill in Granted at"),
    "keep": Term("Keep", "fill in Keep"),
    "list_import": Term("Import a file", "with Import a file, below"),
    "phone_column": Term("Phone column", "fill in Phone column"),
    "refreshed_at": Term("Produced at", "fill in Produced at"),
    "replace": Term("Mode replace", "choose another Mode"),
}
