/* The marker playground's behaviour: vanilla JS, no dependencies, no build step.

It speaks the public HTTP API only, with the bearer token typed into the page:
  GET  <app>/v1/taxonomy, <app>/v1/models     build one control per block category, name the model
  POST <app>/v1/chat/completions, stream: true one request per marker setting, all at once, read as
                                               server-sent events from fetch()'s ReadableStream
<app> is the Serve application that served this page (the page lives at <app>/playground/), or
another application behind the same proxy (its route prefix, e.g. /baseline) to compare two models.
Errors are shown as the API's own message (`error.message` of the JSON body, or the body's text).
*/
"use strict";

const MAX_SETTINGS = 4;
const INFER = ""; // a control's value that leaves its category to the model
const ROOT = location.pathname.replace(/\/playground(\/.*)?$/, ""); // this application's route prefix

const $ = (id) => document.getElementById(id);
const state = { endpoints: [], taxonomy: null, controller: null, serial: 0 };

/** Create an element: el("p", {class: "x"}, "text", child, ...). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children);
  return node;
}

// --- the API ---------------------------------------------------------------------------------
class ApiError extends Error {}

function headers() {
  const token = $("token").value.trim();
  return { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
}

/** The API's own message for a failed response: "HTTP 422: invalid markers: ...". */
async function failure(response) {
  const text = await response.text();
  let message = text.trim() || response.statusText;
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON (e.g. a proxy's 503 text): the text itself */ }
  return new ApiError(`HTTP ${response.status}: ${message}`);
}

async function call(base, path, init = {}) {
  const response = await fetch(base + path, { ...init, headers: headers(), cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response;
}

/** The `data:` payloads of a server-sent event stream, as they arrive. */
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield data;
    }
  }
}

// --- connecting: taxonomy and models ------------------------------------------------------------
function otherBases() {
  return $("endpoints").value.split(",").map((s) => s.trim().replace(/\/+$/, "")).filter(Boolean)
    .map((s) => (s.startsWith("/") ? s : `/${s}`));
}

async function loadEndpoint(base) {
  const where = base || "/";
  try {
    const [taxonomy, models] = await Promise.all([
      call(base, "/v1/taxonomy").then((r) => r.json()), call(base, "/v1/models").then((r) => r.json())]);
    return { base, where, taxonomy, model: models.data[0].id };
  } catch (e) {
    return { base, where, error: `${where}: ${e.message}` };
  }
}

async function connect() {
  const served = $("served");
  served.classList.remove("error");
  served.textContent = "Connecting…";
  const picks = [...document.querySelectorAll("fieldset.setting")].map(readPicks);
  const found = await Promise.all([ROOT, ...otherBases()].map(loadEndpoint));
  const errors = found.filter((e) => e.error).map((e) => e.error);
  state.endpoints = found.filter((e) => !e.error);
  const main = found[0];
  state.taxonomy = main.error ? null : main.taxonomy;
  renderSettings(picks.length ? picks : [{}]);
  renderGlossary();
  if (main.error) {
    served.classList.add("error");
    served.textContent = `${main.error}${main.error.includes("HTTP 401") ? " (enter the token, then Connect)" : ""}`;
    return;
  }
  const t = main.taxonomy;
  const lines = state.endpoints.map((e) => `${e.model} at ${e.where}`
    + (e.taxonomy.markers_trained ? "" : " (not trained with markers: it writes no block, so nothing is inferred)")
    + (e.taxonomy.version !== t.version ? ` (its taxonomy differs: version ${e.taxonomy.version})` : ""));
  served.textContent = `Taxonomy ${t.name} (version ${t.version}). Models: ${lines.join("; ")}.`
    + (errors.length ? ` Not reached: ${errors.join("; ")}.` : "");
  if (errors.length) served.classList.add("error");
}

// --- marker settings ------------------------------------------------------------------------------
function control(category, id) {
  const describedBy = `desc-${category.name}`;
  if (Array.isArray(category.allowed)) {
    const select = el("select", { id, "data-category": category.name, "aria-describedby": describedBy },
      el("option", { value: INFER }, "let the model infer"));
    const notes = category.value_descriptions || {};
    for (const value of category.allowed) select.append(el("option", { value, title: notes[value] || null }, value));
    return select;
  }
  // Numeric categories (int, float): typed; the server checks the value (422 with its message otherwise).
  return el("input", { id, type: "text", inputmode: "decimal", placeholder: "let the model infer",
    "data-category": category.name, "aria-describedby": describedBy, spellcheck: "false", autocomplete: "off" });
}

function settingFieldset(picks) {
  const n = ++state.serial;
  const fieldset = el("fieldset", { class: "setting" }, el("legend"));
  const modelId = `s${n}-model`;
  const models = el("select", { id: modelId, class: "model" },
    ...state.endpoints.map((e, i) => el("option", { value: String(i) }, `${e.model} (${e.where})`)));
  if (picks.model !== undefined && picks.model < state.endpoints.length) models.value = String(picks.model);
  fieldset.append(el("div", { class: "field" }, el("label", { for: modelId }, "Model"), models));
  for (const category of state.taxonomy.categories) {
    const id = `s${n}-${category.name}`;
    const input = control(category, id);
    if (picks.markers && picks.markers[category.name] !== undefined) input.value = picks.markers[category.name];
    fieldset.append(el("div", { class: "field" }, el("label", { for: id }, category.name), input));
  }
  const remove = el("button", { type: "button", class: "remove" }, "Remove this setting");
  remove.addEventListener("click", () => {
    const next = fieldset.nextElementSibling || fieldset.previousElementSibling;
    fieldset.remove();
    renumber();
    if (next) next.querySelector("select, input").focus();
  });
  fieldset.append(remove);
  return fieldset;
}

function renderSettings(picks) {
  const box = $("settings");
  box.replaceChildren();
  if (!state.taxonomy) {
    box.append(el("p", { class: "empty" }, "The marker controls appear once the server's taxonomy is loaded."));
  } else {
    for (const p of picks.slice(0, MAX_SETTINGS)) box.append(settingFieldset(p));
  }
  renumber();
}

function renumber() {
  const sets = [...document.querySelectorAll("fieldset.setting")];
  sets.forEach((fs, i) => {
    fs.querySelector("legend").textContent = `Setting ${i + 1}`;
    fs.querySelector(".remove").hidden = sets.length < 2;
  });
  $("add-setting").disabled = !state.taxonomy || sets.length >= MAX_SETTINGS;
  $("run").disabled = !state.taxonomy;
}

function readPicks(fieldset) {
  const markers = {};
  for (const input of fieldset.querySelectorAll("[data-category]")) {
    if (input.value.trim() !== INFER) markers[input.dataset.category] = input.value.trim();
  }
  return { model: Number(fieldset.querySelector("select.model").value), markers };
}

function renderGlossary() {
  const list = $("glossary");
  list.replaceChildren();
  for (const c of (state.taxonomy && state.taxonomy.categories) || []) {
    const allowed = Array.isArray(c.allowed) ? c.allowed.map((v) => {
      const note = (c.value_descriptions || {})[v];
      return note ? `${v} (${note})` : v;
    }).join("; ") : c.allowed;
    list.append(el("dt", {}, c.name), el("dd", { id: `desc-${c.name}` }, `${c.description || c.kind}. Values: ${allowed}.`));
  }
}

// --- running: one streamed request per setting ---------------------------------------------------
function numberOr(text) {
  const t = text.trim();
  return t === "" || Number.isNaN(Number(t)) ? t : Number(t);
}

function requestBody(endpoint, markers) {
  const body = { model: endpoint.model, messages: [{ role: "user", content: $("prompt").value }] };
  for (const [key, id] of [["max_tokens", "max-tokens"], ["temperature", "temperature"], ["seed", "seed"]]) {
    const value = numberOr($(id).value);
    if (value !== "") body[key] = value; // a value the API refuses comes back as its 422 message
  }
  if (Object.keys(markers).length) body.markers = markers;
  body.stream = true;
  return body;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function snippets(endpoint, body) {
  const url = `${location.origin}${endpoint.base}/v1`;
  const auth = $("token").value.trim() ? ` \\\n  -H "Authorization: Bearer $TREASURE_TOKEN"` : "";
  const curl = `curl -N ${url}/chat/completions \\\n  -H 'Content-Type: application/json'${auth} \\\n`
    + `  -d ${shellQuote(JSON.stringify(body))}`;
  const { model, messages, markers, stream, ...sampling } = body;
  const args = [`model=${JSON.stringify(model)}`, `messages=${JSON.stringify(messages)}`,
    ...Object.entries(sampling).map(([k, v]) => `${k}=${JSON.stringify(v)}`), "stream=True"];
  if (markers) args.push(`extra_body={"markers": ${JSON.stringify(markers)}}`);
  const python = [
    "import os", "", "from openai import OpenAI", "",
    `client = OpenAI(base_url=${JSON.stringify(url)}, api_key=os.environ.get("TREASURE_TOKEN", "unused"))`,
    "stream = client.chat.completions.create(", ...args.map((a) => `    ${a},`), ")",
    "for chunk in stream:",
    "    if chunk.choices and chunk.choices[0].delta.content:",
    "        print(chunk.choices[0].delta.content, end=\"\", flush=True)",
    "    if (chunk.model_extra or {}).get(\"markers\"):",
    "        print(\"\\nmarkers:\", chunk.model_extra[\"markers\"])",
  ].join("\n");
  return { curl, python };
}

async function copy(text, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard API (a plain-http page beyond localhost): the old way
    const area = el("textarea", { class: "offscreen", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
}

function markerList(markers, className, none) {
  const list = el("dl", { class: `markers ${className}` });
  const entries = Object.entries(markers || {});
  if (!entries.length) list.append(el("dt", {}, "—"), el("dd", { class: "none" }, none));
  for (const [k, v] of entries) list.append(el("dt", {}, k), el("dd", { "data-category": k }, String(v)));
  return list;
}

/** One answer card: requested markers, the streamed answer, inferred markers, counts, time, snippets. */
function card(index, endpoint, body) {
  const id = `answer-${index}`;
  const answer = el("div", { class: "answer", "aria-live": "polite", "aria-busy": "true", "aria-labelledby": `${id}-h` });
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const inferredBox = el("div", { class: "inferred-box" }, markerList({}, "inferred", "(when the answer is done)"));
  const stats = el("p", { class: "stats" }, "waiting…");
  const code = snippets(endpoint, body);
  const details = el("details", {}, el("summary", {}, "curl and Python for this request"));
  for (const [name, text] of [["curl", code.curl], ["Python", code.python]]) {
    const button = el("button", { type: "button" }, `Copy ${name}`);
    button.addEventListener("click", () => copy(text, button));
    details.append(el("pre", {}, el("code", { class: name.toLowerCase() }, text)), button);
  }
  const node = el("article", { class: "card", id, "data-state": "streaming", "aria-labelledby": `${id}-h` },
    el("h3", { id: `${id}-h` }, `Setting ${index} · ${endpoint.model}`),
    el("p", { class: "markers-title" }, "Requested"), markerList(body.markers, "requested", "none (all inferred)"),
    answer, error, el("p", { class: "markers-title" }, "Inferred by the model"), inferredBox, stats, details);
  return {
    node,
    append(text) { answer.append(text); },
    finish(summary) {
      inferredBox.replaceChildren(markerList(summary.markers.inferred, "inferred", "none (the model wrote no block)"));
      const u = summary.usage;
      stats.textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens · `
        + `first text ${summary.first} · total ${summary.total} · finish: ${summary.finish_reason}`;
    },
    end(stateName, message) {
      node.dataset.state = stateName;
      answer.setAttribute("aria-busy", "false");
      if (message) { error.textContent = message; error.hidden = false; }
      if (stateName !== "done" && stats.textContent === "waiting…") stats.textContent = "";
    },
  };
}

const ms = (t) => (t === null ? "—" : `${Math.round(t)} ms`);

async function stream(view, endpoint, body, signal) {
  const started = performance.now();
  let first = null;
  let summary = null;
  try {
    const response = await call(endpoint.base, "/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal });
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message); // failed after the headers went out
      const choice = (chunk.choices || [])[0] || {};
      if (choice.delta && choice.delta.content) {
        if (first === null) first = performance.now() - started;
        view.append(choice.delta.content);
      }
      if (chunk.markers) summary = { markers: chunk.markers, usage: chunk.usage, finish_reason: choice.finish_reason };
    }
    if (!summary) throw new ApiError("the stream ended without its final event (markers and usage)");
    view.finish({ ...summary, first: ms(first), total: ms(performance.now() - started) });
    view.end("done");
  } catch (e) {
    if (e.name === "AbortError") view.end("stopped", "Stopped.");
    else view.end("error", e instanceof ApiError ? e.message : `${e.name}: ${e.message}`);
  }
}

async function run(event) {
  event.preventDefault();
  if (!state.taxonomy) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const answers = $("answers");
  answers.replaceChildren();
  const jobs = [...document.querySelectorAll("fieldset.setting")].map((fieldset, i) => {
    const picks = readPicks(fieldset);
    const endpoint = state.endpoints[picks.model];
    const body = requestBody(endpoint, picks.markers);
    const view = card(i + 1, endpoint, body);
    answers.append(view.node);
    return stream(view, endpoint, body, controller.signal);
  });
  $("stop").disabled = false;
  await Promise.allSettled(jobs);
  if (state.controller === controller) {
    state.controller = null;
    $("stop").disabled = true;
  }
}

// --- wiring -------------------------------------------------------------------------------------------
function init() {
  const params = new URLSearchParams(location.search);
  if (params.get("endpoints")) $("endpoints").value = params.get("endpoints");
  $("ask").addEventListener("submit", run);
  $("connect").addEventListener("click", connect);
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); connect(); } });
  $("endpoints").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); connect(); } });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("add-setting").addEventListener("click", () => {
    if (document.querySelectorAll("fieldset.setting").length >= MAX_SETTINGS) return;
    const fieldset = settingFieldset({});
    $("settings").append(fieldset);
    renumber();
    fieldset.querySelector("select, input").focus();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("ask").requestSubmit(); }
    if (e.key === "Escape" && state.controller) state.controller.abort();
  });
  connect();
}

init();
