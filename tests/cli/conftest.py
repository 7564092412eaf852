"""The fixtures of the command's tests (tests/cli/test_cli.py), for every module here."""

from tests.cli.test_cli import cli, config_file, no_callgate_env  # noqa: F401
