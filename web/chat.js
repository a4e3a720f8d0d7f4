// The chat tab: a multi-turn conversation with one chat endpoint, streamed token by token, with
// a stop button that aborts the request (the server then cancels the sequence) and, per reply,
// its tokens, speed and cost at the endpoint's prices.
import { call, events } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { pythonSnippet } from "./snippet.js";

const $ = (id) => document.getElementById(id);

export function formatCost(usd) {
  if (usd === 0) return "$0";
  return usd < 0.01 ? `$${usd.toPrecision(2)}` : `$${usd.toFixed(4)}`;
}

export class ChatTab {
  constructor(onAuthError) {
    this.onAuthError = onAuthError;
    this.models = [];
    this.history = [];  // {role, content} sent back each turn
    this.controller = null;

    for (const [input, output] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]])
      $(input).addEventListener("input", () => ($(output).value = $(input).value));
    $("chat-model").addEventListener("change", () => this.showPrice());
    $("chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    $("chat-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("new-chat").addEventListener("click", () => this.clear());
    $("show-code").addEventListener("click", () => this.showCode());
    $("close-code").addEventListener("click", () => $("code-dialog").close());
    $("copy-code").addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText($("code-text").textContent);
        $("copy-code").textContent = "Copied";
      } catch {
        $("copy-code").textContent = "Select and copy";
      }
      setTimeout(() => ($("copy-code").textContent = "Copy"), 1500);
    });
  }

  setModels(models) {
    this.models = models.filter((m) => m.kind === "chat");
    const select = $("chat-model");
    select.replaceChildren(...this.models.map((m) => new Option(m.id, m.id)));
    if (!this.models.length) $("chat-error").textContent = "This server has no chat endpoint.";
    const first = this.models[0];
    if (first && first.max_tokens) $("max-tokens").value = Math.min(first.max_tokens, 1024);
    this.showPrice();
  }

  model() {
    return this.models.find((m) => m.id === $("chat-model").value);
  }

  showPrice() {
    const p = this.model()?.pricing;
    $("chat-price").textContent = p
      ? `$${p.input_per_million} per million input tokens, $${p.output_per_million} per million output tokens`
      : "";
  }

  settings() {
    const number = (id, fallback) => {
      const v = parseFloat($(id).value);
      return Number.isFinite(v) ? v : fallback;
    };
    return {
      model: $("chat-model").value,
      temperature: number("temperature", 0.7),
      topP: number("top-p", 0.95),
      maxTokens: Math.max(1, Math.round(number("max-tokens", 256))),
    };
  }

  // The messages of the next request: the system prompt, then the conversation.
  messages(extra = []) {
    const system = $("system-prompt").value.trim();
    return [...(system ? [{ role: "system", content: system }] : []), ...this.history, ...extra];
  }

  addBubble(role, text) {
    const item = document.createElement("li");
    item.className = `message ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = role === "user" ? "body plain" : "body reply";
    if (role === "user") body.textContent = text;
    else body.innerHTML = renderMarkdown(text);
    const stats = document.createElement("p");
    stats.className = "stats";
    item.append(who, body, stats);
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
    return { item, body, stats };
  }

  busy(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    $("chat-model").disabled = on;
    if (!on) $("chat-input").focus();
  }

  async send() {
    const text = $("chat-input").value.trim();
    if (!text || this.controller) return;
    const settings = this.settings();
    if (!settings.model) return;
    $("chat-error").textContent = "";
    $("chat-input").value = "";
    const userMessage = { role: "user", content: text };
    this.addBubble("user", text);
    const bubble = this.addBubble("assistant", "");
    bubble.body.classList.add("streaming");
    const messages = this.messages([userMessage]);
    this.history.push(userMessage);
    this.controller = new AbortController();
    this.busy(true);

    const started = performance.now();
    let firstToken = null;
    let reply = "";
    let chunks = 0;
    let usage = null;
    let stopped = false;
    try {
      const response = await call("/v1/chat/completions", {
        method: "POST",
        signal: this.controller.signal,
        body: {
          model: settings.model,
          messages,
          temperature: settings.temperature,
          top_p: settings.topP,
          max_tokens: settings.maxTokens,
          stream: true,
          stream_options: { include_usage: true },
        },
      });
      for await (const event of events(response)) {
        if (event.error) throw new Error(event.error.message);
        if (event.usage) usage = event.usage;
        const delta = event.choices?.[0]?.delta?.content;
        if (delta) {
          if (firstToken === null) firstToken = performance.now();
          chunks++;
          reply += delta;
          bubble.body.innerHTML = renderMarkdown(reply);
          bubble.item.scrollIntoView({ block: "end" });
        }
      }
    } catch (e) {
      if (e.name === "AbortError") {
        stopped = true;
      } else {
        $("chat-error").textContent = e.message;
        if (e.status === 401) this.onAuthError(e.message);
      }
    } finally {
      this.controller = null;
      bubble.body.classList.remove("streaming");
      this.busy(false);
    }
    if (reply) {
      this.history.push({ role: "assistant", content: reply });
    } else {
      this.history.pop();  // nothing came back: the question can be asked again
      if (!stopped && !$("chat-error").textContent) bubble.body.textContent = "(empty reply)";
    }
    bubble.stats.textContent = this.stats(settings.model, usage, chunks, started, firstToken, stopped);
  }

  stats(modelId, usage, chunks, started, firstToken, stopped) {
    const now = performance.now();
    const seconds = (now - started) / 1000;
    const tokens = usage ? usage.completion_tokens : chunks;
    // Decode speed: from the first token on, so queueing and the prompt do not count.
    const decodeSeconds = firstToken !== null ? (now - firstToken) / 1000 : 0;
    const rate = tokens > 1 && decodeSeconds > 0 ? ((tokens - 1) / decodeSeconds).toFixed(1) : "–";
    const parts = [`${usage ? "" : "~"}${tokens} tokens`, `${rate} tokens/s`, `${seconds.toFixed(1)} s`];
    const price = this.models.find((m) => m.id === modelId)?.pricing;
    if (usage && price)
      parts.push(formatCost((usage.prompt_tokens * price.input_per_million + usage.completion_tokens * price.output_per_million) / 1e6));
    if (stopped) parts.push("stopped");
    return parts.join(" · ");
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  clear() {
    this.stop();
    this.history = [];
    $("messages").replaceChildren();
    $("chat-error").textContent = "";
    $("chat-input").focus();
  }

  showCode() {
    const s = this.settings();
    const pending = $("chat-input").value.trim();
    const messages = this.messages(pending ? [{ role: "user", content: pending }] : []);
    if (!messages.some((m) => m.role === "user")) messages.push({ role: "user", content: "Hello!" });
    $("code-text").textContent = pythonSnippet({
      baseUrl: `${location.origin}/v1`,
      model: s.model,
      messages,
      temperature: s.temperature,
      topP: s.topP,
      maxTokens: s.maxTokens,
    });
    $("code-dialog").showModal();
  }
}
