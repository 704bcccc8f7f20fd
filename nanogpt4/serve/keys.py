"""API keys and where the server's state lives.

`home()` is the one place for the server's state (the SQLite database): `--home DIR`, else $NANOGPT4_HOME, else
$XDG_DATA_HOME/nanogpt4 (~/.local/share/nanogpt4). `nanogpt4 keys create|list|revoke` and `nanogpt4 serve` agree
on it. A key is shown once, when it is created; the database keeps only its sha256, and a presented key is found
by its hash and compared in constant time. Each key carries its own requests-per-minute and tokens-per-minute
limits (the launch's 200 RPM / 40,000 TPM by default).
"""
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..common import UserError

DEFAULT_RPM, DEFAULT_TPM = 200, 40_000  # GPT-4's limits at launch
SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER NOT NULL,
    tpm INTEGER NOT NULL
);
"""


class KeysError(UserError, ValueError):
    pass


def home(path=None):
    """The server's state directory (created if missing)."""
    base = path or os.environ.get("NANOGPT4_HOME") or \
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "nanogpt4"
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    return base


def connect(home_dir):
    """The state database: SQLite in WAL mode, the schema created if missing."""
    db = sqlite3.connect(Path(home_dir) / "nanogpt4.db", timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash of the process or the machine
    db.executescript(SCHEMA)
    return db


def digest(key):
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Key:
    id: int
    prefix: str
    name: str
    created: float
    revoked: float
    rpm: int
    tpm: int


def _key(row):
    return Key(*row)


COLUMNS = "id, prefix, name, created, revoked, rpm, tpm"


def create(db, name, rpm=DEFAULT_RPM, tpm=DEFAULT_TPM):
    """A new key: returns (the key itself, to show once, and its Key record)."""
    if rpm < 1 or tpm < 1:
        raise KeysError("rpm and tpm limits must be positive")
    key = "sk-nano-" + secrets.token_urlsafe(32)
    cur = db.execute("INSERT INTO keys (prefix, sha256, name, created, rpm, tpm) VALUES (?, ?, ?, ?, ?, ?)",
                     (key[:12], digest(key), name, time.time(), rpm, tpm))
    return key, get(db, cur.lastrowid)


def get(db, key_id):
    row = db.execute(f"SELECT {COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise KeysError(f"no key with id {key_id}")
    return _key(row)


def all_keys(db):
    return [_key(r) for r in db.execute(f"SELECT {COLUMNS} FROM keys ORDER BY id")]


def revoke(db, key_id):
    if db.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id)).rowcount == 0:
        get(db, key_id)  # raises if it does not exist
        raise KeysError(f"key {key_id} is already revoked")
    return get(db, key_id)


def check(db, presented):
    """The Key a presented secret belongs to, or None. Looked up by its hash, the hashes compared in constant time."""
    h = digest(presented)
    row = db.execute(f"SELECT {COLUMNS}, sha256 FROM keys WHERE sha256 = ?", (h,)).fetchone()
    if row is None or not hmac.compare_digest(row[-1], h):
        return None
    return _key(row[:-1])


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--home", default=None, help="server state directory (default: $NANOGPT4_HOME or "
                                                "~/.local/share/nanogpt4)")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="make a key (shown once)")
    c.add_argument("--name", default="default", help="a label for the key")
    c.add_argument("--rpm", type=int, default=DEFAULT_RPM, help="requests per minute")
    c.add_argument("--tpm", type=int, default=DEFAULT_TPM, help="tokens per minute (max_tokens counts up front)")
    sub.add_parser("list", help="the keys (never their secrets)")
    r = sub.add_parser("revoke", help="revoke a key: it then gets 403")
    r.add_argument("id", type=int, help="the key's id (from `keys list`)")


def main(args):
    db = connect(home(args.home))
    if args.cmd == "create":
        key, k = create(db, args.name, args.rpm, args.tpm)
        print(f"key {k.id} ({k.name}, {k.rpm} RPM, {k.tpm:,} TPM) — shown once, keep it:\n{key}")
    elif args.cmd == "list":
        for k in all_keys(db):
            state = "revoked " + time.strftime("%Y-%m-%d", time.localtime(k.revoked)) if k.revoked else "active"
            print(f"{k.id:>4}  {k.prefix}…  {k.name:<20} {k.rpm:>6} RPM {k.tpm:>8} TPM  "
                  f"created {time.strftime('%Y-%m-%d', time.localtime(k.created))}  {state}")
    else:
        k = revoke(db, args.id)
        print(f"key {k.id} ({k.name}) revoked")
