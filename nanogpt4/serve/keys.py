"""API keys: `nanogpt4 keys create|list|revoke|reinstate`, in the server's state database (serve/db.py).

A key is shown once, when it is created; the database keeps only its sha256, and a presented key is found
by its hash and compared in constant time. Each key carries its own requests-per-minute and tokens-per-minute
limits (the launch's 200 RPM / 40,000 TPM by default). A revoked key is refused for good; a suspended one
(by abuse monitoring, serve/monitor.py) until an operator reinstates it.
"""
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..common import UserError
from . import db as state

DEFAULT_RPM, DEFAULT_TPM = 200, 40_000  # GPT-4's limits at launch


class KeysError(UserError, ValueError):
    pass


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
    suspended: float = None
    suspended_reason: str = None


def _key(row):
    return Key(*row)


COLUMNS = "id, prefix, name, created, revoked, rpm, tpm, suspended, suspended_reason"


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


def suspend(db, key_id, reason):
    """Suspend a key (abuse monitoring); it gets 403 until reinstated."""
    db.execute("UPDATE keys SET suspended = ?, suspended_reason = ? WHERE id = ? AND suspended IS NULL",
               (time.time(), reason, key_id))
    return get(db, key_id)


def reinstate(db, key_id):
    if db.execute("UPDATE keys SET suspended = NULL, suspended_reason = NULL WHERE id = ? AND suspended IS NOT NULL",
                  (key_id,)).rowcount == 0:
        get(db, key_id)
        raise KeysError(f"key {key_id} is not suspended")
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
    r = sub.add_parser("reinstate", help="lift a suspension made by abuse monitoring")
    r.add_argument("id", type=int, help="the key's id (from `keys list`)")


def main(args):
    db = state.connect(state.home(args.home))
    if args.cmd == "create":
        key, k = create(db, args.name, args.rpm, args.tpm)
        print(f"key {k.id} ({k.name}, {k.rpm} RPM, {k.tpm:,} TPM) — shown once, keep it:\n{key}")
    elif args.cmd == "list":
        for k in all_keys(db):
            status = "revoked " + time.strftime("%Y-%m-%d", time.localtime(k.revoked)) if k.revoked else \
                f"suspended ({k.suspended_reason})" if k.suspended else "active"
            print(f"{k.id:>4}  {k.prefix}…  {k.name:<20} {k.rpm:>6} RPM {k.tpm:>8} TPM  "
                  f"created {time.strftime('%Y-%m-%d', time.localtime(k.created))}  {status}")
    elif args.cmd == "revoke":
        k = revoke(db, args.id)
        print(f"key {k.id} ({k.name}) revoked")
    else:
        k = reinstate(db, args.id)
        print(f"key {k.id} ({k.name}) reinstated")
