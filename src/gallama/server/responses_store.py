"""The Responses API's store: stored responses and their conversations, in one SQLite file.

The front creates the file (a temporary one unless `--responses-store PATH` names one that
survives a restart) and every worker opens it: a response stored by one worker continues on
another, and the front answers GET and DELETE from it. Bounded by count and bytes; the oldest
responses go first.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from typing import Any

from gallama.protocol.errors import InvalidRequest

DEFAULT_MAX_RESPONSES = 10_000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ResponsesStore:
    def __init__(self, path: str, max_responses: int = DEFAULT_MAX_RESPONSES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = path
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._secret: bytes | None = None
        # Several processes share the file: WAL lets readers go on while one writes; writers wait their turn.
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)

    @staticmethod
    def temporary_path() -> str:
        """A new empty file for a store that lasts as long as its server."""
        handle, path = tempfile.mkstemp(prefix="gallama-responses-", suffix=".sqlite3")
        os.close(handle)
        return path

    def secret(self) -> bytes:
        """The key that protects reasoning.encrypted_content: made once per store, shared by its processes."""
        if self._secret is None:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)", (secrets.token_hex(32),))
                (value,) = self._db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            self._secret = bytes.fromhex(value)
        return self._secret

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        response_text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        conversation_text = json.dumps(conversation, ensure_ascii=False, separators=(",", ":"))
        size = len(response_text.encode()) + len(conversation_text.encode())
        if size > self.max_bytes:
            return  # could never fit: keeping it would evict everything else
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (id, created, size, response, conversation) VALUES (?, ?, ?, ?, ?)",
                    (response["id"], time.time(), size, response_text, conversation_text),
                )
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        count, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if count <= self.max_responses and total <= self.max_bytes:
            return
        for response_id, size in self._db.execute("SELECT id, size FROM responses ORDER BY created, rowid").fetchall():
            if count <= self.max_responses and total <= self.max_bytes:
                break
            self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            count, total = count - 1, total - size

    def get(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE id = ?", (response_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def conversation(self, response_id: str) -> list[dict[str, Any]] | None:
        """The input and output items of the response and of those it continued, oldest first."""
        with self._lock:
            row = self._db.execute("SELECT conversation FROM responses WHERE id = ?", (response_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def input_items(self, response_id: str) -> list[dict[str, Any]] | None:
        """What the response answered: its conversation without its own output, each item with an id."""
        response, conversation = self.get(response_id), self.conversation(response_id)
        if response is None or conversation is None:
            return None
        items = conversation[: len(conversation) - len(response["output"])]
        return [item if item.get("id") else {"id": f"{response_id}_item_{n}", **item} for n, item in enumerate(items)]

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM responses ORDER BY created, rowid")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def input_items_page(items: list[dict[str, Any]], limit: int, order: str, after: str | None) -> dict[str, Any]:
    """One page of GET /v1/responses/{id}/input_items, as OpenAI lists them (newest first by default)."""
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100.", param="limit")
    ordered = items[::-1] if order == "desc" else items
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}'.", param="after")
        ordered = ordered[ids.index(after) + 1:]
    page = ordered[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit}
