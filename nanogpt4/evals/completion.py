"""Completion functions: the one interface every eval talks to, and its two implementations.

    fn(prompt, max_tokens=…, temperature=0.0, n=1, stop=None, seed=None, logprobs=False) -> CompletionResult

`prompt` is a string or a list of chat messages ({"role", "content"}), as in openai/evals. `LocalCompletion` runs a
run directory's checkpoint through the generation engine (nanogpt4/engine.py): the eval's worker threads submit
their requests and the engine batches them continuously; a seeded request samples with its own generator, so its
text does not depend on which requests shared its batch. `HTTPCompletion` calls any OpenAI-compatible server (our
own, or a hosted model) with a per-request timeout and retries with exponential backoff and full jitter on 429,
5xx, timeouts and dropped connections; other errors (400, 401, 404) are not retried.
"""
import random
import time
from dataclasses import dataclass, field

import torch

from .. import chat, runs
from ..model import vision
from ..chat import is_chat
from ..engine import Engine, SamplingParams, prompt_ids


def inline(prompt):
    """A chat prompt whose image parts given as local paths (registry samples: "path" or "file://path") become
    data URLs, as the server would receive them."""
    import base64
    import mimetypes
    from pathlib import Path

    def part(p):
        url = p["image_url"]["url"] if p.get("type") == "image_url" else "data:"
        if url.startswith("data:"):
            return p
        path = Path(url.removeprefix("file://"))
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return dict(p, image_url=dict(p["image_url"], url=f"data:{mime};base64,{data}"))
    return [dict(m, content=[part(p) for p in m["content"]]) if isinstance(m["content"], list) else m for m in prompt]


@dataclass
class CompletionResult:
    completions: list
    logprobs: list = None  # per completion: [(token text, log-probability), …] when asked for
    info: dict = field(default_factory=dict)  # e.g. prompt_tokens, truncated

    def get_completions(self):
        return self.completions


class LocalCompletion:
    """A checkpoint (run directory) as a completion function. `chat_template`: render chat prompts in the chat
    format (chat.py: post-trained models) instead of openai/evals' plain-text rendering (base models). A prompt
    longer than the context minus the answer's room (max_tokens, at most half the context) loses tokens from its
    left, counted in info["truncated"]."""

    def __init__(self, run, chat_template=False, max_rows=16, device=None):
        loaded = runs.load(run, device)
        self.model, self.tok, self.vision = loaded.model, loaded.tok, loaded.vision
        self.engine = Engine(self.model, self.tok, max_rows=max_rows)
        self.name = f"local:{run}"
        self.chat_template = chat_template
        self.n_ctx = self.engine.n_ctx

    def count_tokens(self, text):
        return len(self.tok.encode(text))

    def score(self, pairs):
        """Summed log-probability of each continuation after its context, [(context, continuation), …] → floats
        (likelihood ranking; the context loses tokens from its left if it does not fit, see scoring.py)."""
        from ..scoring import batch_option_logprobs
        cut = []
        for c, o in pairs:  # an option longer than the whole context is scored on its first n_ctx/2 tokens
            ids = self.tok.encode(o)
            cut.append((c, o if len(ids) < self.n_ctx else self.tok.decode(ids[:self.n_ctx // 2])))
        def scores():
            with torch.inference_mode():
                return [r[0] for r in batch_option_logprobs(self.model, self.tok, [(c, [o]) for c, o in cut])]
        return self.engine.run(scores)  # on the engine's thread, between its steps

    def encode(self, prompt, limit):
        """(ids, tokens cut, image embeddings or None) of a prompt. A vision model's chat prompt gets its images'
        placeholders and embeddings, and is never cut (that would cut images apart); a text model refuses images."""
        if is_chat(prompt) and self.chat_template:
            if self.vision is None:
                r, views = chat.render(self.tok, prompt), None
            else:
                r, views = vision.render(self.tok, inline(prompt), self.vision.cfg)
            if r.images:
                if self.vision is None:
                    raise ValueError(f"{self.name} is not a vision model: it cannot read image inputs")
                return r.ids, 0, self.vision.embed_views(views)
            cut = max(0, len(r.ids) - limit)
            return r.ids[cut:], cut, None
        if is_chat(prompt) and any(p.get("type") == "image_url" for m in prompt if isinstance(m["content"], list)
                                   for p in m["content"]):
            raise ValueError(f"{self.name}: image inputs need a vision model with its chat format")
        return *prompt_ids(self.tok, chat.to_plain_text(prompt) if is_chat(prompt) else prompt, limit), None

    def __call__(self, prompt, max_tokens=256, temperature=0.0, n=1, stop=None, seed=None, logprobs=False,
                 top_p=1.0, top_k=0, **_):
        room = min(int(max_tokens), self.n_ctx // 2)
        ids, cut, images = self.encode(prompt, self.n_ctx - room)
        params = SamplingParams(max_tokens=min(int(max_tokens), self.n_ctx - len(ids)), temperature=float(temperature or 0),
                                top_p=top_p, top_k=top_k, stop=stop or (), seed=seed, n=n)
        out = self.engine.submit(ids, params, images).result()
        texts = [c.text.lstrip() if is_chat(prompt) else c.text for c in out.choices]  # "Assistant:" → " answer"
        lps = None
        if logprobs:  # the text's tokens (a closing stop token excluded) under their sampling distribution
            lps = [[(self.tok.decode([t]), lp) for t, lp in zip(c.token_ids, c.logprobs) if t not in self.engine.stop_ids]
                   for c in out.choices]
        return CompletionResult(texts, lps, dict(prompt_tokens=len(ids), truncated=cut))

    def cancel_all(self):
        """Cancel every request in flight (an eval that stopped waiting for them): their callers get Cancelled."""
        self.engine.cancel_all()


class HTTPCompletion:
    """An OpenAI-compatible endpoint (base URL + key) through the official client. `api`: "chat" sends messages
    (a string prompt becomes one system message, as in openai/evals), "completions" sends text."""

    RETRY_STATUS = (408, 409, 429)

    def __init__(self, base_url, model, api_key="none", api="chat", timeout=60.0, max_retries=6, backoff_s=1.0,
                 max_backoff_s=60.0):
        import openai
        self.openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.name, self.model, self.api = f"{base_url}#{model}", model, api
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s

    def __call__(self, prompt, max_tokens=256, temperature=0.0, n=1, stop=None, seed=None, logprobs=False, **_):
        kw = dict(model=self.model, max_tokens=max_tokens, temperature=temperature, n=n)
        kw.update({k: v for k, v in dict(stop=stop, seed=seed).items() if v is not None})
        if self.api == "chat":
            messages = prompt if is_chat(prompt) else [{"role": "system", "content": prompt}]
            extra = dict(logprobs=True) if logprobs else {}  # unset, not null: servers may reject null fields
            resp = self._retry(lambda: self.client.chat.completions.create(messages=messages, **extra, **kw))
            texts = [c.message.content or "" for c in resp.choices]
            lps = [[(t.token, t.logprob) for t in (c.logprobs.content or [])] if c.logprobs else [] for c in resp.choices]
        else:
            text = chat.to_plain_text(prompt) if is_chat(prompt) else prompt
            extra = dict(logprobs=1) if logprobs else {}
            resp = self._retry(lambda: self.client.completions.create(prompt=text, **extra, **kw))
            texts = [c.text for c in resp.choices]
            lps = [list(zip(c.logprobs.tokens, c.logprobs.token_logprobs)) if c.logprobs else [] for c in resp.choices]
        usage = resp.usage.model_dump() if getattr(resp, "usage", None) else {}
        return CompletionResult(texts, lps if logprobs else None, dict(usage=usage))

    def _retry(self, call):
        o = self.openai
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except (o.APITimeoutError, o.APIConnectionError, o.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retryable = status is None or status >= 500 or status in self.RETRY_STATUS
                if not retryable or attempt == self.max_retries:
                    raise
                wait = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))  # full jitter
                after = getattr(getattr(e, "response", None), "headers", {}).get("retry-after")
                if after:
                    try:
                        wait = max(wait, min(float(after), self.max_backoff_s))
                    except ValueError:
                        pass
                time.sleep(wait)


def make(model, api_key=None, chat_template=False, device=None):
    """A completion function from a command-line model string: an http(s) URL `URL#model` (the server applies its
    own chat format) or a run directory (`chat_template`: see LocalCompletion) loaded on `device`."""
    if model.startswith(("http://", "https://")):
        url, _, name = model.partition("#")
        return HTTPCompletion(url, name or "default", api_key=api_key or "none")
    return LocalCompletion(model, chat_template=chat_template, device=device)
