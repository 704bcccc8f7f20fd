"""Usage metering: one row per answered request (key, user, client, snapshot, UTC day, prompt and completion
tokens, cost at the snapshot's prices — nothing for a request the server failed —, how it finished), committed before the response completes (before a
non-streamed body is sent, before a stream's usage chunk and `[DONE]`), so a server killed at any moment has
metered every request a client saw complete. `nanogpt4 usage` sums it per key, model and day.
"""
import datetime as dt
import time

from ..common import UserError
from . import db as state


def cost(prices, prompt_tokens, completion_tokens):
    """USD at per-1K-token prices."""
    return (prompt_tokens * prices["prompt"] + completion_tokens * prices["completion"]) / 1000


def record(db, request_id, key_id, user, client, snapshot, prompt_tokens, completion_tokens, finish, now=None):
    """Insert one usage row (the caller's transaction commits it, or autocommit does)."""
    now = time.time() if now is None else now
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d")
    db.execute("INSERT INTO usage (request_id, key_id, user, client, model, day, at, prompt_tokens, "
               "completion_tokens, cost, finish) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (request_id, key_id, user, client, snapshot.name, day, now, prompt_tokens, completion_tokens,
                0.0 if finish == "error" else cost(snapshot.prices, prompt_tokens, completion_tokens), finish))


def summary(db, key_id=None, since=None):
    """Rows of (key id, key name, model, day, requests, prompt tokens, completion tokens, cost), by key/model/day."""
    where, args = [], []
    if key_id is not None:
        where.append("u.key_id = ?")
        args.append(key_id)
    if since is not None:
        where.append("u.day >= ?")
        args.append(since)
    sql = ("SELECT u.key_id, COALESCE(k.name, '(no key)'), u.model, u.day, COUNT(*), SUM(u.prompt_tokens), "
           "SUM(u.completion_tokens), SUM(u.cost) FROM usage u LEFT JOIN keys k ON k.id = u.key_id "
           + ("WHERE " + " AND ".join(where) if where else "") +
           " GROUP BY u.key_id, u.model, u.day ORDER BY u.day, u.key_id, u.model")
    return db.execute(sql, args).fetchall()


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--home", default=None, help="server state directory (default: $NANOGPT4_HOME or "
                                                "~/.local/share/nanogpt4)")
    p.add_argument("--key", type=int, default=None, help="only this key id (from `nanogpt4 keys list`)")
    p.add_argument("--since", default=None, help="only days on or after this UTC date (YYYY-MM-DD)")


def main(args):
    if args.since is not None:
        try:
            dt.date.fromisoformat(args.since)
        except ValueError:
            raise UserError(f"--since: not a date (YYYY-MM-DD): {args.since!r}") from None
    rows = summary(state.connect(state.home(args.home)), args.key, args.since)
    print(f"{'day':<10}  {'key':>4}  {'name':<16} {'model':<22} {'requests':>8} {'prompt':>10} {'completion':>10} "
          f"{'cost USD':>10}")
    for key_id, name, model, day, n, p, c, usd in rows:
        print(f"{day:<10}  {key_id if key_id is not None else '-':>4}  {name[:16]:<16} {model[:22]:<22} {n:>8} "
              f"{p:>10,} {c:>10,} {usd:>10.4f}")
    if rows:
        print(f"{'total':<10}  {'':>4}  {'':<16} {'':<22} {sum(r[4] for r in rows):>8} {sum(r[5] for r in rows):>10,} "
              f"{sum(r[6] for r in rows):>10,} {sum(r[7] for r in rows):>10.4f}")
    return rows

