"""Small shared helpers: atomic writes, sha256, the cache directory, run-directory metadata."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """An error the user can cause and fix (bad input, a missing or corrupt file): the CLI prints its message as
    one line and exits non-zero, without a traceback."""


def cache_dir() -> Path:
    """Where downloaded packages live: $NANOGPT4_CACHE or ~/.cache/nanogpt4."""
    return Path(os.environ.get("NANOGPT4_CACHE", Path.home() / ".cache" / "nanogpt4"))


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def git_commit() -> str:
    """The commit of the code that is running (with '-dirty' if the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


class JsonlError(UserError, ValueError):
    pass


def iter_jsonl(path, torn_tail=False):
    """Yield one object per non-empty line of a JSONL file; a bad line is an error naming file and line.
    torn_tail: the file is a log appended to by a process that may have died mid-write, so a last line that has
    no newline and does not parse is that torn write, and is dropped."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    if torn_tail and not line.endswith("\n"):  # only the last line can lack its newline
                        return
                    raise JsonlError(f"{path}:{n}: invalid JSON ({e})") from e
