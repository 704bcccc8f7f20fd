"""The chat format: OpenAI-style messages → token ids, for serving, evals and post-training alike.

Each turn is `<|role|>` [name: ] content `<|end|>` with the tokenizer's own role tokens (system, user, assistant;
a role is never folded into another turn's text). `render` can end with an open assistant turn (plus a prefix the
answer must continue) to generate from, and returns a loss mask that is 1 exactly on assistant content and its
closing `<|end|>`, what SFT trains on. Image content parts become `<|image|>` placeholders (as many per image as
the caller's vision model costs, with its tile markers: model/vision.py `see`; the model splices image embeddings
in at them). Special-token strings inside content are encoded as plain text, so a user cannot forge a turn.

Base models have no chat format: `to_plain_text` is openai/evals' rendering of messages as "Role: content" lines.
"""
import re
from dataclasses import dataclass, field

from .common import UserError

ROLES = ("system", "user", "assistant")
DETAILS = ("auto", "low", "high")  # an image part's optional detail, as in OpenAI's API
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a participant's name


class ChatError(UserError, ValueError):
    pass


@dataclass
class Rendered:
    ids: list
    mask: list  # 1 where the token is assistant output to train on
    images: list = field(default_factory=list)  # the image parts, in placeholder order


def is_chat(prompt):
    return isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)


def parts(content, where):
    """A message's content as a list of parts {"type": "text", "text"} / {"type": "image_url", "image_url"}."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise ChatError(f"{where}: content must be a string or a non-empty list of content parts, "
                        f"not {type(content).__name__}")
    for i, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            continue
        if kind == "image_url" and isinstance(p.get("image_url"), dict) and isinstance(p["image_url"].get("url"), str) \
                and p["image_url"].get("detail", "auto") in DETAILS:
            continue
        raise ChatError(f"{where}.content[{i}]: expected {{'type': 'text', 'text': str}} or "
                        f"{{'type': 'image_url', 'image_url': {{'url': str, 'detail'?: 'auto' | 'low' | 'high'}}}}, "
                        f"got {p!r:.80}")
    return content


def validate(messages):
    """Check a conversation; raises ChatError naming the bad message. Returns it unchanged."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ChatError(f"{where}: must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise ChatError(f"{where}: unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})")
        if "content" not in m:
            raise ChatError(f"{where}: missing 'content'")
        parts(m["content"], where)
        if m.get("name") is not None and not (isinstance(m["name"], str) and NAME.match(m["name"])):
            raise ChatError(f"{where}: name must be 1-64 letters, digits, '_' or '-', got {m['name']!r:.80}")
    return messages


def render(tok, messages, generate=True, prefix="", image=1):
    """Token ids and loss mask of a conversation. `generate`: end with an open assistant turn (and `prefix`, text
    the answer starts with) for the model to continue; otherwise the conversation is complete (training). `image`:
    the placeholders of each image part (an int), or a function part → its layout, a list of runs of placeholders
    (ints) and marker texts (strs), called on the image parts in order (model/vision.py `render`)."""
    validate(messages)
    if prefix and not generate:
        raise ChatError("an assistant prefix needs generate=True")
    out = Rendered([], [])
    for m in messages:
        train = int(m["role"] == "assistant")
        head = [tok.special(m["role"])] + (tok.encode(m["name"] + ": ") if m.get("name") else [])
        out.ids += head
        out.mask += [0] * len(head)
        for p in parts(m["content"], m["role"]):
            if p["type"] == "text":
                body = tok.encode(p["text"])
            else:
                body = []
                for x in image(p) if callable(image) else [image]:
                    body += tok.encode(x) if isinstance(x, str) else [tok.special("image")] * x
                out.images.append(p)
            out.ids += body
            out.mask += [train] * len(body)
        out.ids.append(tok.special("end"))
        out.mask.append(train)
    if generate:
        tail = [tok.special("assistant")] + (tok.encode(prefix) if prefix else [])
        out.ids += tail
        out.mask += [0] * len(tail)
    return out


def text_of(content):
    """The text of a message's content (image parts dropped); for models and renderings without images."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def to_plain_text(messages, for_completion=True):
    """openai/evals' rendering of a chat prompt for a model without a chat format: one message is its content;
    several are "Role: content" lines (system messages bare, example_user/example_assistant as User/Assistant),
    ending with "Assistant:" when the model is to answer."""
    if len(messages) == 1:
        return text_of(messages[0]["content"])
    prefixes = {"system": "", "example_user": "User: ", "example_assistant": "Assistant: "}
    text = ""
    for m in messages:
        role = m.get("name", m["role"])
        text += prefixes.get(role, role.capitalize() + ": ") + text_of(m["content"]) + "\n"
    return (text + ("Assistant:" if for_completion else "")).lstrip()
