"""Where the server's state lives: one directory (`home()`) holding one SQLite database (WAL, synchronous=FULL)
with every table the server keeps — API keys, usage records, flagged requests — created or brought up to date
when it is opened. `nanogpt4 keys`, `nanogpt4 usage` and `nanogpt4 serve` agree on it.

The home is `--home DIR`, else $NANOGPT4_HOME, else $XDG_DATA_HOME/nanogpt4 (~/.local/share/nanogpt4).
A committed row survives a crash of the process (SIGKILL) or of the machine: WAL with synchronous=FULL syncs
the log at every commit, and SQLite replays or discards the log on the next open, so a restarted server finds
every committed row and none half-written.
"""
import contextlib
import os
import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER NOT NULL,
    tpm INTEGER NOT NULL,
    suspended REAL,
    suspended_reason TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id INTEGER,              -- NULL: served without keys (--no-auth)
    user TEXT NOT NULL,          -- who the chat page's cap counts: key id, or the client's address without keys
    client TEXT NOT NULL,        -- 'api' or 'chat-page'
    model TEXT NOT NULL,         -- the snapshot that answered
    day TEXT NOT NULL,           -- UTC date, YYYY-MM-DD
    at REAL NOT NULL,            -- unix time the record was committed
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,          -- USD at the snapshot's prices
    finish TEXT NOT NULL         -- 'stop', 'length', 'cancelled' (the client left), 'error'
);
CREATE INDEX IF NOT EXISTS usage_key_day ON usage (key_id, model, day);
CREATE INDEX IF NOT EXISTS usage_user_at ON usage (user, client, at);
CREATE TABLE IF NOT EXISTS flagged (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id INTEGER,
    at REAL NOT NULL,
    direction TEXT NOT NULL,     -- 'request' or 'response'
    sha256 TEXT NOT NULL,        -- of the text
    categories TEXT NOT NULL,    -- comma-separated moderation categories
    text TEXT                    -- kept only with --keep-flagged-text
);
CREATE INDEX IF NOT EXISTS flagged_key_at ON flagged (key_id, at);
"""
ADDED_COLUMNS = {"keys": {"suspended": "REAL", "suspended_reason": "TEXT"}}  # columns newer than the first schema


class Connection(sqlite3.Connection):
    """A connection shared by the server's threads; `transaction()` holds its lock for a multi-statement write."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self):
        with self.lock:
            self.execute("BEGIN IMMEDIATE")
            try:
                yield self
                self.execute("COMMIT")
            except BaseException:
                if self.in_transaction:  # a failed COMMIT (disk full, I/O error) must not leave it open
                    self.execute("ROLLBACK")
                raise


def home(path=None):
    """The server's state directory (created if missing)."""
    base = path or os.environ.get("NANOGPT4_HOME") or \
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "nanogpt4"
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    return base


def reader(db):
    """A second connection to `db`'s file for reads on the event loop: WAL readers neither wait for a writer's
    fsync nor see its uncommitted rows."""
    path = db.execute("PRAGMA database_list").fetchone()[2]
    return sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)


def connect(home_dir):
    """The state database in `home_dir`: WAL, synchronous=FULL, every table created or brought up to date."""
    db = sqlite3.connect(Path(home_dir) / "nanogpt4.db", timeout=30, isolation_level=None, check_same_thread=False,
                         factory=Connection)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    with db.lock:
        db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    return db
