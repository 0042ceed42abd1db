"""The server's log handler: rich's layout for a person at a terminal, plain lines for files and pipes
(rich spends ~1.3 ms of the event loop on a line, and the server writes one a request)."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console
from rich.logging import RichHandler

from gallama import cli


@pytest.fixture
def added_handlers():
    """Sets up logging on a root logger without handlers, as a fresh process has it (pytest's own put
    aside meanwhile); returns the handlers the setup added."""
    root = logging.getLogger()
    kept, level = root.handlers[:], root.level

    def setup(level_name: str) -> list[logging.Handler]:
        root.handlers = []
        cli._setup_logging(level_name)
        added = root.handlers[:]
        root.handlers += kept  # pytest's capture goes on
        return added

    yield setup
    root.handlers, root.level = kept, level


def test_a_terminal_gets_rich_lines(added_handlers, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), force_terminal=True))
    assert [type(h) for h in added_handlers("info")] == [RichHandler]


def test_a_file_or_pipe_gets_plain_lines(added_handlers, monkeypatch, capsys):
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), force_terminal=False))
    (handler,) = added_handlers("warning")
    assert type(handler) is logging.StreamHandler
    logging.getLogger("gallama").warning("a line for the log")
    logging.getLogger("gallama").info("below the level")
    err = capsys.readouterr().err
    assert "WARNING a line for the log" in err and "below the level" not in err
