// The nanogpt4 chat page: plain browser JavaScript, no framework and no build step.
//
// It speaks the server's OpenAI-compatible API: GET /health (does the server need keys, what is the chat cap),
// GET /v1/models (the model picker) and POST /v1/chat/completions with stream: true, whose server-sent events are
// read with fetch and a ReadableStream and appended as they arrive. Requests carry X-Nanogpt4-Client: chat-page,
// which is what the server counts its per-user message cap on. The conversation, system message, chosen model
// and token limit are kept in localStorage (the API key too, under its own name), so a reload restores them.
// Model output is only ever set as text (textContent / text nodes), never parsed as HTML. An attached image goes
// with the next message as an OpenAI image_url part holding a data URL (models with vision read it; others answer
// 400, shown as an error, and the image stays attached).
"use strict";

const STORE = "nanogpt4.chat";      // {system, model, maxTokens, messages: [{role, content, model?, note?}]}
const KEY_STORE = "nanogpt4.apiKey";
const CLIENT = "chat-page";         // the X-Nanogpt4-Client header value the server caps

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), maxTokens: $("max-tokens"), capInfo: $("cap-info"), newChat: $("new-chat"),
  auth: $("auth"), apiKey: $("api-key"), system: $("system"), capMessage: $("cap-message"), error: $("error"),
  messages: $("messages"), empty: $("empty"), main: document.querySelector("main"),
  composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  attach: $("attach"), attachFile: $("attach-file"), attachment: $("attachment"),
  attachmentPreview: $("attachment-preview"), detach: $("detach"),
};
const MAX_IMAGE_BYTES = 5 * 1024 * 1024;  // the server's limit per image

let state = loadState();
let apiKey = localStorage.getItem(KEY_STORE) || "";
let needsKey = true;     // until /health says otherwise
let inflight = null;     // the AbortController of the answer being streamed
let attached = null;     // the data URL of the image to send with the next message

// ---------------------------------------------------------------------------------------------- storage

function loadState() {
  const empty = { system: "", model: "", maxTokens: "", messages: [] };
  try {
    const saved = JSON.parse(localStorage.getItem(STORE));
    if (!saved || !Array.isArray(saved.messages)) return empty;
    const messages = saved.messages.filter((m) => m && (m.role === "user" || m.role === "assistant")
                                                  && (typeof m.content === "string" || Array.isArray(m.content)));
    return { ...empty, ...saved, messages };
  } catch {
    return empty;  // nothing saved, or not ours
  }
}

function saveState() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch {
    // storage full or disabled: the page still works, it just won't remember
  }
}

// ---------------------------------------------------------------------------------------------- the API

class APIError extends Error {
  // An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with its HTTP status.
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `The server answered HTTP ${status}.`);
    this.status = status;
    this.code = e.code || null;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status alone has to do
  }
  return new APIError(response.status, body);
}

function headers(extra = {}) {
  const h = { ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function* serverEvents(body) {
  // The JSON payloads of a text/event-stream body, one per event, until `data: [DONE]` or the end.
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;  // a comment or keep-alive
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------- rendering

function bubble(message) {
  const el = document.createElement("article");
  el.className = `msg ${message.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : (message.model || "Assistant");
  const text = document.createElement("div");
  text.className = "text";
  for (const part of Array.isArray(message.content) ? message.content : [{ type: "text", text: message.content }]) {
    if (part.type === "text") {
      text.append(part.text);
    } else if (part.type === "image_url" && /^data:image\//.test(part.image_url.url)) {
      const img = document.createElement("img");
      img.className = "image";
      img.alt = "Attached image";
      img.src = part.image_url.url;
      text.append(img);
    }
  }
  el.append(who, text);
  if (message.note) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = message.note;
    el.append(note);
  }
  return el;
}

function render() {
  ui.messages.replaceChildren(ui.empty, ...state.messages.map(bubble));
  ui.empty.hidden = state.messages.length > 0;
  scrollToEnd(true);
}

function scrollToEnd(force = false) {
  // Follow the answer as it grows, unless the reader has scrolled up to read something.
  const nearEnd = ui.main.scrollHeight - ui.main.scrollTop - ui.main.clientHeight < 80;
  if (force || nearEnd) ui.main.scrollTop = ui.main.scrollHeight;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function showCapReached(message) {
  const title = document.createElement("strong");
  title.textContent = "Usage cap reached. ";
  const text = document.createElement("span");
  text.id = "cap-text";
  text.textContent = message;
  ui.capMessage.replaceChildren(title, text);
  ui.capMessage.hidden = false;
}

function clearBanners() {
  showError("");
  ui.capMessage.hidden = true;
}

function showFailure(e) {
  if (e.code === "usage_cap_reached") {
    showCapReached(e.message);
  } else if (e instanceof APIError) {
    showError(e.message);
    if (e.status === 401 || e.status === 403) {
      ui.auth.hidden = false;
      ui.auth.classList.add("attention");
    }
  } else {
    showError(`Could not reach the server (${e.message}).`);
  }
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

// ---------------------------------------------------------------------------------------------- server info

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

async function checkHealth() {
  try {
    const response = await fetch("/health");
    if (!response.ok) throw await errorOf(response);
    const health = await response.json();
    needsKey = health.auth !== false;  // a server that doesn't say may need one
    const cap = health.chat_cap;
    if (cap && cap.messages > 0) {
      ui.capInfo.textContent = `Cap: ${plural(cap.messages, "message")} every ${plural(cap.hours, "hour")}`;
      ui.capInfo.hidden = false;
    }
  } catch (e) {
    showFailure(e);
  }
  ui.auth.hidden = !needsKey;
}

function defaultModel(ids) {
  // An alias (no -YYYYMMDD date) follows the current snapshot; failing that, the newest-named snapshot.
  return ids.find((id) => !/-\d{8}$/.test(id)) || [...ids].sort().pop();
}

async function loadModels() {
  if (needsKey && !apiKey) {
    ui.auth.classList.add("attention");
    ui.model.replaceChildren(new Option("enter an API key", ""));
    return;
  }
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw await errorOf(response);
    const ids = (await response.json()).data.map((m) => m.id);
    ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (!ids.includes(state.model)) state.model = defaultModel(ids) || "";
    ui.model.value = state.model;
    ui.auth.classList.remove("attention");
    showError("");
    saveState();
  } catch (e) {
    ui.model.replaceChildren(new Option("no models", ""));
    showFailure(e);
  }
}

// ---------------------------------------------------------------------------------------------- chatting

function conversation() {
  // What the server is sent: the system message first (if any), then the turns that have text.
  const turns = state.messages.filter((m) => m.content).map(({ role, content }) => ({ role, content }));
  return state.system.trim() ? [{ role: "system", content: state.system }, ...turns] : turns;
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || inflight) return;
  if (!state.model) {
    showError(needsKey && !apiKey ? "Enter your API key first." : "No model to send to: the server lists none.");
    return;
  }
  clearBanners();
  const image = attached;
  const user = { role: "user", content: image ? [{ type: "image_url", image_url: { url: image } },
                                                 { type: "text", text }] : text };
  setAttachment(null);
  state.messages.push(user);
  const request = { model: state.model, messages: conversation(), stream: true };
  const maxTokens = parseInt(state.maxTokens, 10);
  if (maxTokens > 0) request.max_tokens = maxTokens;
  const answer = { role: "assistant", content: "", model: state.model };
  state.messages.push(answer);
  ui.input.value = "";
  render();
  const answerEl = ui.messages.lastElementChild;
  const textEl = answerEl.querySelector(".text");
  answerEl.classList.add("streaming");

  inflight = new AbortController();
  setBusy(true);
  let accepted = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "X-Nanogpt4-Client": CLIENT }),
      body: JSON.stringify(request),
      signal: inflight.signal,
    });
    if (!response.ok) throw await errorOf(response);
    accepted = true;
    for await (const event of serverEvents(response.body)) {
      if (event.error) throw new APIError(500, event);
      for (const choice of event.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          answer.content += piece;
          textEl.append(piece);  // a text node: model output is never HTML
          scrollToEnd();
        }
        if (choice.finish_reason === "length") answer.note = "Stopped at the token limit.";
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      answer.note = "Stopped.";
    } else if (!accepted) {
      // Refused (cap, key, bad request): take the message back into the input to send again later.
      state.messages.splice(state.messages.indexOf(user), 2);
      if (!ui.input.value.trim()) ui.input.value = text;
      if (image && !attached) setAttachment(image);
      showFailure(e);
    } else {
      answer.note = "The answer was cut off by an error.";
      showFailure(e);
    }
  } finally {
    inflight = null;
    setBusy(false);
    if (!answer.content) {  // nothing came: don't keep an empty bubble
      const at = state.messages.indexOf(answer);
      if (at >= 0) state.messages.splice(at, 1);
    }
    saveState();
    render();
    ui.input.focus();
  }
}

function setAttachment(url) {
  attached = url;
  ui.attachment.hidden = !url;
  if (url) ui.attachmentPreview.src = url;
  else ui.attachmentPreview.removeAttribute("src");
}

function attachFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type)) {
    showError("Attach a PNG, JPEG, GIF or WebP image.");
    return;
  }
  if (file.size > MAX_IMAGE_BYTES) {
    showError("That image is larger than 5 MiB.");
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    clearBanners();
    setAttachment(reader.result);
  };
  reader.onerror = () => showError("The image could not be read.");
  reader.readAsDataURL(file);
}

function stop() {
  if (inflight) inflight.abort();  // the partial answer is kept
}

function newChat() {
  stop();
  state.messages = [];
  saveState();
  clearBanners();
  render();
  ui.input.focus();
}

// ---------------------------------------------------------------------------------------------- wiring

function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", stop);
ui.attach.addEventListener("click", () => ui.attachFile.click());
ui.attachFile.addEventListener("change", () => {
  attachFile(ui.attachFile.files[0]);
  ui.attachFile.value = "";  // choosing the same file again fires change again
});
ui.detach.addEventListener("click", () => setAttachment(null));
ui.newChat.addEventListener("click", newChat);
ui.system.addEventListener("input", () => {
  state.system = ui.system.value;
  saveState();
});
ui.model.addEventListener("change", () => {
  state.model = ui.model.value;
  saveState();
});
ui.maxTokens.addEventListener("input", () => {
  state.maxTokens = ui.maxTokens.value;
  saveState();
});
ui.apiKey.addEventListener("input", debounce(() => {
  apiKey = ui.apiKey.value.trim();
  localStorage.setItem(KEY_STORE, apiKey);
  loadModels();
}, 300));
window.addEventListener("pagehide", saveState);  // keeps a partial answer if the page goes mid-stream

ui.system.value = state.system;
ui.maxTokens.value = state.maxTokens;
ui.apiKey.value = apiKey;
render();
checkHealth().then(loadModels).finally(() => document.body.classList.add("ready"));
