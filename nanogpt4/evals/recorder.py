"""The record of one eval run: an append-only JSONL file.

Line 1 is the run's spec ({"spec": …}: eval, model, seed, sample count, git commit); then one event per finished
sample ({"type": "sample", "sample_id", "seed", "data": prompt/sampled/metrics}) or failed one ({"type": "error"});
the last line is {"final_report": …}. Re-opening the file for the same spec (eval, model, seed, samples; the code's
git commit may differ) resumes it: finished samples are kept and not redone, failed ones are retried; a different
spec is refused. A line cut short by a crash is dropped on resume.
"""
import json
import os
import threading
import time
from pathlib import Path

from ..common import UserError


class RecordError(UserError, ValueError):
    pass


RUN_FIELDS = ("created", "git_commit")  # recorded, but a resumed run may differ in them (the first run's are kept)


def read(path):
    """(spec, events, final_report or None) of a record; a torn last line is ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # cut short by a crash mid-write
            raise RecordError(f"{path}:{i + 1}: not JSON") from None
    if not rows or "spec" not in rows[0]:
        raise RecordError(f"{path}: not an eval record (no spec line)")
    final = next((r["final_report"] for r in rows if "final_report" in r), None)
    return rows[0]["spec"], [r for r in rows[1:] if "type" in r], final


class Recorder:
    def __init__(self, path, spec: dict):
        self.path, self.lock = Path(path), threading.Lock()
        self.done = {}  # sample_id -> event
        if self.path.exists() and self.path.stat().st_size:
            old, events, _ = read(self.path)
            same = lambda d: {k: v for k, v in d.items() if k not in RUN_FIELDS}  # noqa: E731
            if same(old) != same(spec):
                raise RecordError(f"{self.path} records another run (spec differs); use another --out")
            self.done = {e["sample_id"]: e for e in events if e["type"] == "sample"}
            self._rewrite_clean()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(dict(spec=spec))

    def _rewrite_clean(self):
        """Drop a torn last line and an old final report (a resumed run writes a new one)."""
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = []
        for line in lines:
            try:
                if "final_report" not in json.loads(line):
                    keep.append(line)
            except json.JSONDecodeError:
                pass
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def _append(self, obj):
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
            f.flush()

    def sample(self, sample_id, seed, data):
        event = dict(type="sample", sample_id=sample_id, seed=seed, data=data, created=time.time())
        self._append(event)
        self.done[sample_id] = event

    def error(self, sample_id, seed, message):
        self._append(dict(type="error", sample_id=sample_id, seed=seed, error=message, created=time.time()))

    def final(self, report):
        self._append(dict(final_report=report))
