"""callgate's FastAGI door: ``AGI(agi://127.0.0.1:4573/check?...)`` from the dialplan."""

from __future__ import annotations

from agi.server import AgiRequest, AgiServer, parse_request

__all__ = ["AgiRequest", "AgiServer", "parse_request"]
