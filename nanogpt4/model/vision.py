"""The vision encoder: images → the embeddings the GPT splices in at `<|image|>` placeholders (gpt.py `embed`).

A ViT trained from scratch (Dosovitskiy et al. 2021): a patch embedding, learned 2D position encoding (a row and a
column table, summed: 2·g vectors instead of g² for a g×g grid), pre-norm blocks of bidirectional attention and a
GELU MLP. The projector (as in LLaVA-1.5 / nanoVLM) pixel-shuffles each s×s group of patch features into one
vector (SmolVLM/Idefics3: s² fewer tokens, no information dropped) and maps it with a two-layer MLP into the
decoder's width. A view of an image costs `tokens` placeholders: (image_size / patch / shuffle)² = 16 at the defaults.

Images of any size are seen as one view letterboxed to image_size × image_size (aspect kept, padded grey) or, when
large (OpenAI's `detail`: "high", or "auto" with a side ≥ 2 × image_size), tiled as in LLaVA-NeXT and Idefics3:
up to max_tiles × max_tiles tiles in reading order, each after a text marker "row r, column c:" — so a tile's place
in the picture is in the prompt's words, not only in the encoder (markers in the words of the questions, "top
left:", learned slower in a pilot; the two models' whole-image thumbnail before the tiles is left out: 16 more
tokens a tiled image for nothing the multi-panel task needed, NOTES.md). `see` gives an image's
layout (placeholders and markers, what chat.render writes: the cost is known before any forward pass and the API
counts it in `usage`) and its views. `load_image` turns bytes or a `data:` URL into a checked RGB Pillow image
(malformed, truncated, oversized, decompression-bomb and unsupported images are a clear ImageError, never a crash).
"""
import base64
import binascii
import io
import warnings
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import chat
from ..common import UserError

MAX_BYTES = 5 * 2 ** 20  # an encoded image larger than this is refused before decoding
MAX_PIXELS = 4096 * 4096  # width × height read from the header; larger is refused before decoding (bombs)
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
MIME = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "image/bmp"}


class ImageError(UserError, ValueError):
    pass


@dataclass
class VisionConfig:
    image_size: int = 64
    patch: int = 8
    width: int = 128
    depth: int = 2
    n_head: int = 4
    shuffle: int = 2
    out_dim: int = 256  # the decoder's n_embd
    max_tiles: int = 2  # tiles per side of a large image

    @classmethod
    def for_decoder(cls, cfg):
        """The encoder on the decoder's size dial. width = n_embd / 2: an image of 64 patches carries far less
        than a 256-token text context, and half the width keeps the encoder's compute below a tenth of the
        decoder's; depth = n_layer / 2 (at least 2): the same depth-to-width ratio as the decoder's rule; heads of
        32 dimensions (the smallest the decoder uses at depth 4); patch 8 and shuffle 2 on 64×64 images: 64 patches
        to attend over and 16 tokens per image, a few percent of the decoder's context."""
        width = max(64, cfg.n_embd // 2)
        return cls(width=width, depth=max(2, cfg.n_layer // 2), n_head=max(1, width // 32), out_dim=cfg.n_embd)

    @property
    def grid(self):
        return self.image_size // self.patch

    @property
    def tokens(self):
        """Placeholder tokens per image."""
        return (self.grid // self.shuffle) ** 2

    def tiles(self, width, height, detail="auto"):
        """(rows, columns) of tiles for an image of width × height: one per image_size of a side, rounded up, at
        most max_tiles; (1, 1) (one view, no tiles) for detail "low" and for "auto" unless a side is at least
        twice image_size (the generated 64-pixel images stay one view)."""
        if detail not in chat.DETAILS:
            raise ImageError(f"detail must be one of {', '.join(chat.DETAILS)}, got {detail!r}")
        if detail == "low" or (detail == "auto" and max(width, height) < 2 * self.image_size):
            return 1, 1
        side = lambda n: min(self.max_tiles, max(1, -(-n // self.image_size)))  # noqa: E731
        return side(height), side(width)

    def layout(self, rows, cols):
        """An image's part of the prompt: ints are runs of placeholders, strings are marker text."""
        if (rows, cols) == (1, 1):
            return [self.tokens]
        return [x for r in range(rows) for c in range(cols) for x in (f"row {r + 1}, column {c + 1}:", self.tokens)]

    def to_dict(self):
        return asdict(self)

    def validate(self):
        if self.image_size % self.patch or self.grid % self.shuffle or self.width % self.n_head or self.max_tiles < 1:
            raise ValueError(f"bad vision layout: {self}")
        return self


class Block(nn.Module):
    def __init__(self, width, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class VisionEncoder(nn.Module):
    """Pixels (N, 3, S, S), normalised by `to_tensor` → (N, tokens, out_dim) embeddings for the decoder."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg.validate()
        g, w = cfg.grid, cfg.width
        self.patch = nn.Conv2d(3, w, cfg.patch, stride=cfg.patch)
        self.row, self.col = nn.Parameter(torch.randn(g, w) * 0.02), nn.Parameter(torch.randn(g, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, cfg.n_head) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(w)
        s2 = cfg.shuffle ** 2
        self.projector = nn.Sequential(nn.Linear(s2 * w, cfg.out_dim), nn.GELU(), nn.Linear(cfg.out_dim, cfg.out_dim))
        # where in the image each output token sits, in the decoder's space: the decoder's RoPE tells it how far
        # back a token is, not which row and column of the picture it covers ("the top-left panel")
        self.place = nn.Parameter(torch.zeros(cfg.tokens, cfg.out_dim))

    def forward(self, pixels):
        g, s = self.cfg.grid, self.cfg.shuffle
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (N, g·g, w), row-major
        x = x + (self.row[:, None, :] + self.col[None, :, :]).reshape(g * g, -1)
        for block in self.blocks:
            x = block(x)
        x = self.ln(x)
        N, _, w = x.shape  # pixel shuffle: each s×s block of patches → one vector of s²·w
        x = x.view(N, g // s, s, g // s, s, w).permute(0, 1, 3, 2, 4, 5).reshape(N, (g // s) ** 2, s * s * w)
        return self.projector(x) + self.place

    def embed(self, pixels):
        """Embeddings of N images flattened row-major, (N·tokens, out_dim): the `images` argument of GPT.forward
        for prompts whose placeholders are those images' in order."""
        return self(pixels).reshape(-1, self.cfg.out_dim)

    @torch.no_grad()
    def embed_views(self, views):
        """`embed` of the views of some images (uint8 tensors from `see`), in order, on this encoder's device and
        dtype: what the server and the evals hand the engine."""
        w = next(self.parameters())
        return self.embed(normalise(torch.cat(views)).to(w.device, w.dtype))


# ----------------------------------------------------------------------------- preprocessing

def load_image(source):
    """A checked RGB Pillow image from bytes or a `data:image/...;base64,` URL. Remote URLs, other schemes, bad
    base64, oversized or decompression-bomb images, truncated or corrupt files and unsupported formats raise
    ImageError with the reason."""
    from PIL import Image
    if isinstance(source, str):
        if not source.startswith("data:"):
            scheme = source.split(":", 1)[0] if ":" in source else "a path"
            raise ImageError(f"image URLs must be data URLs (data:image/png;base64,...); {scheme!r} URLs are not "
                             "fetched (this server has no network access)")
        head, _, body = source.partition(",")
        mime = head[5:].split(";")[0].lower()
        if mime not in MIME or ";base64" not in head:
            raise ImageError(f"unsupported data URL {head[:40]!r}: expected data:image/(png|jpeg|gif|webp|bmp);base64,")
        if len(body) > MAX_BYTES * 4 // 3 + 4:
            raise ImageError(f"image larger than {MAX_BYTES // 2 ** 20} MiB")
        try:
            source = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("the data URL's base64 payload is malformed") from None
    if len(source) > MAX_BYTES:
        raise ImageError(f"image larger than {MAX_BYTES // 2 ** 20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source), formats=FORMATS)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image of {img.width}×{img.height} pixels exceeds the limit of {MAX_PIXELS:,} "
                                 "pixels")
            img.load()
            return img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"image refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"the image is truncated or corrupt ({e})") from None


def letterbox(img, size):
    """An RGB Pillow image letterboxed into size × size (aspect kept, bicubic, padded mid-grey) as uint8
    (3, size, size): the compact form datasets are kept in."""
    from PIL import Image
    img = img.convert("RGB")
    scale = size / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    canvas.paste(img if (w, h) == img.size else img.resize((w, h), Image.BICUBIC), ((size - w) // 2, (size - h) // 2))
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def normalise(u8):
    """uint8 pixels → floats in [-1, 1], what the encoder reads."""
    return u8.float() / 127.5 - 1.0


def see(cfg, source, detail="auto"):
    """How the encoder of `cfg` sees an image (Pillow image, bytes or data URL): its layout in the prompt
    (`VisionConfig.layout`) and its views as uint8 (k, 3, S, S): the image letterboxed, or its tiles in reading
    order (the image cut into rows × cols equal parts, each letterboxed)."""
    from PIL import Image
    img = source if isinstance(source, Image.Image) else load_image(source)
    rows, cols = cfg.tiles(img.width, img.height, detail)
    if (rows, cols) == (1, 1):
        return cfg.layout(1, 1), letterbox(img, cfg.image_size)[None]
    views = []
    for r in range(rows):
        for c in range(cols):
            box = (c * img.width // cols, r * img.height // rows, (c + 1) * img.width // cols,
                   (r + 1) * img.height // rows)
            views.append(letterbox(img.crop(box), cfg.image_size))
    return cfg.layout(rows, cols), torch.stack(views)


def render(tok, messages, cfg, **kw):
    """chat.render for the encoder of `cfg`: (the rendering with each image's placeholders and markers, the views
    of its images in placeholder order). An image that cannot be read is an ImageError naming which one."""
    views = []

    def image(part):
        try:
            layout, v = see(cfg, part["image_url"]["url"], part["image_url"].get("detail", "auto"))
        except ImageError as e:
            raise ImageError(f"image {len(views) + 1}: {e}") from None
        views.append(v)
        return layout
    return chat.render(tok, messages, image=image, **kw), views
