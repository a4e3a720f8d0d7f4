// The images tab: a text-to-image request with a progress bar over the denoising steps (the
// server's "stream": true events), and a gallery where every image shows its seed, can be
// downloaded under a name holding the seed, and can seed the next request.
import { call, events } from "./api.js";
import { DEFAULT_NEGATIVE, PRESETS } from "./presets.js";
import { formatCost } from "./chat.js";

const $ = (id) => document.getElementById(id);

function pngBlob(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

export class ImagesTab {
  constructor(onAuthError) {
    this.onAuthError = onAuthError;
    this.models = [];
    this.controller = null;

    const presets = $("preset");
    presets.append(new Option("Choose a preset…", ""));
    PRESETS.forEach((p, i) => presets.append(new Option(p.name, String(i))));
    presets.addEventListener("change", () => this.applyPreset());
    $("negative-prompt").value = DEFAULT_NEGATIVE;
    $("preset-tip").textContent = "Tip: describe a photograph the way a photographer would, and say what to avoid in the negative prompt.";
    $("random-seed").addEventListener("change", () => {
      $("seed").disabled = $("random-seed").checked;
      if (!$("seed").disabled) $("seed").focus();
    });
    $("image-model").addEventListener("change", () => this.showModel());
    $("image-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.generate();
    });
    $("image-prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("image-form").requestSubmit();
      }
    });
  }

  setModels(models) {
    this.models = models.filter((m) => m.kind === "image");
    $("image-model").replaceChildren(...this.models.map((m) => new Option(m.id, m.id)));
    if (!this.models.length) $("image-error").textContent = "This server has no image endpoint.";
    $("generate").disabled = !this.models.length;
    this.showModel();
  }

  model() {
    return this.models.find((m) => m.id === $("image-model").value);
  }

  showModel() {
    const m = this.model();
    if (!m) return;
    $("size").replaceChildren(...(m.sizes || []).map((s) => new Option(s.replace("x", " × "), s)));
    if (m.steps) $("steps").value = m.steps;
    if (m.max_steps) $("steps").max = m.max_steps;
    if (m.guidance_scale !== undefined) $("guidance").value = m.guidance_scale;
    $("image-price").textContent = m.pricing ? `$${m.pricing.per_image} per image` : "";
  }

  applyPreset() {
    const preset = PRESETS[Number($("preset").value)];
    if (!$("preset").value || !preset) return;
    $("image-prompt").value = preset.prompt;
    $("negative-prompt").value = preset.negative;
    $("preset-tip").textContent = `Tip: ${preset.tip}`;
  }

  progress(step, total, label) {
    $("image-progress").max = Math.max(total, 1);
    $("image-progress").value = step;
    $("progress-label").textContent = label;
  }

  async generate() {
    if (this.controller) return;
    const model = this.model();
    const prompt = $("image-prompt").value.trim();
    if (!model || !prompt) {
      $("image-error").textContent = prompt ? "Choose an image endpoint." : "Write a prompt first.";
      return;
    }
    $("image-error").textContent = "";
    const body = {
      model: model.id,
      prompt,
      size: $("size").value,
      response_format: "b64_json",
      stream: true,
    };
    const negative = $("negative-prompt").value.trim();
    if (negative) body.negative_prompt = negative;
    const steps = parseInt($("steps").value, 10);
    if (Number.isFinite(steps)) body.steps = steps;
    const guidance = parseFloat($("guidance").value);
    if (Number.isFinite(guidance)) body.guidance_scale = guidance;
    if (!$("random-seed").checked) {
      const seed = parseInt($("seed").value, 10);
      if (!Number.isFinite(seed) || seed < 0) {
        $("image-error").textContent = "The seed must be a whole number of 0 or more, or tick Random.";
        return;
      }
      body.seed = seed;
    }

    this.controller = new AbortController();
    $("generate").disabled = true;
    this.progress(0, 1, "Queued…");
    const started = performance.now();
    try {
      const response = await call("/v1/images/generations", { method: "POST", body, signal: this.controller.signal });
      for await (const event of events(response)) {
        if (event.type === "progress") this.progress(event.step, event.total, `Step ${event.step} of ${event.total}`);
        else if (event.type === "error") throw new Error(event.error.message);
        else if (event.type === "result") {
          const seconds = (performance.now() - started) / 1000;
          for (const item of event.data) this.addResult(item, body, model, seconds);
          this.progress(1, 1, `Done in ${seconds.toFixed(1)} s`);
        }
      }
    } catch (e) {
      this.progress(0, 1, "Idle");
      if (e.name !== "AbortError") {
        $("image-error").textContent = e.message;
        if (e.status === 401) this.onAuthError(e.message);
      }
    } finally {
      this.controller = null;
      $("generate").disabled = false;
    }
  }

  addResult(item, request, model, seconds) {
    const url = URL.createObjectURL(pngBlob(item.b64_json));
    const card = document.createElement("li");
    card.className = "result";
    const img = document.createElement("img");
    img.src = url;
    img.alt = request.prompt;
    const [w, h] = request.size.split("x").map(Number);
    img.width = w;
    img.height = h;
    const caption = document.createElement("div");
    caption.className = "caption";
    const seed = document.createElement("p");
    seed.className = "seed-value";
    seed.textContent = `Seed ${item.seed}`;
    const details = document.createElement("p");
    details.className = "hint";
    const cost = model.pricing ? ` · ${formatCost(model.pricing.per_image)}` : "";
    details.textContent = `${request.size} · ${request.steps ?? model.steps} steps · ${seconds.toFixed(1)} s${cost}`;
    const prompt = document.createElement("p");
    prompt.className = "prompt";
    prompt.textContent = request.prompt;
    const actions = document.createElement("div");
    actions.className = "buttons";
    const download = document.createElement("a");
    download.href = url;
    download.download = `tessera-seed-${item.seed}.png`;
    download.textContent = "Download";
    download.className = "button";
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = "Use this seed";
    reuse.addEventListener("click", () => {
      $("random-seed").checked = false;
      $("seed").disabled = false;
      $("seed").value = String(item.seed);
      $("image-prompt").value = request.prompt;
      $("negative-prompt").value = request.negative_prompt || "";
      $("image-prompt").focus();
    });
    actions.append(download, reuse);
    caption.append(seed, details, prompt, actions);
    card.append(img, caption);
    $("gallery").prepend(card);
    $("gallery-empty").hidden = true;
  }
}
