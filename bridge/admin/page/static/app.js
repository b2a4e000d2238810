// The bridge's admin page: plain JavaScript, no build step, nothing from other sites.
// Everything it shows and changes goes through the provisioning API (../api/v1/), with the
// token kept in sessionStorage (gone when the tab closes). Text from the server is always
// set as text, never parsed as HTML.
"use strict";

const API = new URL("../api/v1/", location.href).pathname;
const PAGE = new URL("./", location.href).pathname;
const TOKEN_KEY = "bridge-admin.token";
const WHO_KEY = "bridge-admin.who";
const KIND_KEY = "bridge-admin.kind"; // "matrix" (an access token) or "secret"

const state = { networks: {}, rooms: [], selected: null, linkSpecs: null };

// --- small helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function $(id) { return document.getElementById(id); }

function replace(container, ...children) {
  container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso)
    : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
}

function percent(share) {
  return share === null || share === undefined ? "–" : `${Math.round(share * 100)} %`;
}

function roomLabel(room) {
  if (!room) return "";
  const alias = room.alias ? ` (${room.alias})` : "";
  return (room.name || room.alias || room.room_id) + (room.name && room.alias ? alias : "");
}

function roomName(roomId) {
  const room = state.rooms.find((r) => r.room_id === roomId);
  return room ? roomLabel(room) : roomId || "";
}

function linkLabel(link) {
  const name = link.remote_name ? ` (${link.remote_name})` : "";
  return `${link.network}: ${link.remote_id}${name}`;
}

// --- talking to the bridge --------------------------------------------------------------

class ApiError extends Error {
  constructor(status, errcode, message) {
    super(message);
    this.status = status;
    this.errcode = errcode;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// Calls in flight: the page says it is busy meanwhile (aria-busy on the body), for assistive
// technology and for the browser test, which waits for the page to settle before it types.
let inFlight = 0;
function busy(delta) {
  inFlight += delta;
  document.body.setAttribute("aria-busy", inFlight > 0 ? "true" : "false");
}

async function request(url, method, body, bearer) {
  busy(1);
  try {
    return await send(url, method, body, bearer);
  } finally {
    busy(-1);
  }
}

async function send(url, method, body, bearer) {
  const headers = { "X-Bridge-Via": "admin-page", "Accept": "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "NETWORK", "The bridge cannot be reached; is it running?");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    const sentence = data && data.error ? data.error
      : `The bridge answered HTTP ${response.status}.`;
    throw new ApiError(response.status, data && data.errcode, sentence);
  }
  return data || {};
}

// A call of the provisioning API with the session's token. A 401 means the token is no
// longer good (logged out elsewhere, secret changed): back to the login.
async function api(method, path, body) {
  try {
    return await request(API + path, method, body, token());
  } catch (err) {
    if (err.status === 401) {
      forgetSession();
      showLogin("Your session has ended; log in again.");
    }
    throw err;
  }
}

function roomPath(roomId) { return `rooms/${encodeURIComponent(roomId)}`; }

// The actions' sentences are written for chat, with `code` in backticks: shown as code.
function sentence(text) {
  return String(text).split("`").map((part, i) => (i % 2 ? el("code", {}, part) : part))
    .filter((part) => part !== "");
}

// --- forms: one message line each, the API's sentence on failure ------------------------

// A change redraws the room's card: then the message goes to the form of the same id that
// replaced the one submitted.
// A form that the change removed (the email link form, once the room has an address) says
// it in the room's list of links.
function say(form, text, ok) {
  const target = form.isConnected ? form
    : (form.id && document.getElementById(form.id)) || document.getElementById("room-links");
  const line = target && target.querySelector(".form-message");
  if (!line) return;
  line.replaceChildren(...sentence(text || ""));
  line.className = `form-message ${ok ? "ok" : "error"}`;
  line.setAttribute("role", ok ? "status" : "alert");
}

// Runs `action` for a submitted form: buttons disabled meanwhile, the outcome said next to
// the form; afterwards, what the change touched is shown again.
function onSubmit(form, action) {
  // The bridge checks what is typed, and its sentence says what is wrong: the browser's own
  // checks would only stand in front of it.
  form.noValidate = true;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    say(form, "", true);
    try {
      const message = await action(new FormData(form));
      if (message) say(form, message, true);
    } catch (err) {
      say(form, err.message, false);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
  return form;
}

// A button whose outcome is said in the message line of `form` (a table in a form).
function actionButton(label, form, action, extra) {
  return el("button", {
    type: "button", class: "secondary", ...extra,
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const message = await action();
        if (message) say(form, message, true);
      } catch (err) {
        say(form, err.message, false);
      } finally {
        button.disabled = false;
      }
    },
  }, label);
}

// A labelled input; `hint` (what the field means) is shown under it and read with it.
function field(label, name, attrs, hint) {
  const id = `f-${Math.random().toString(36).slice(2, 9)}`;
  const hintNode = hint ? el("small", { id: `${id}-hint`, class: "hint" }, hint) : null;
  return el("div", {}, el("label", { for: id }, label),
    el("input", { id, name, "aria-describedby": hintNode ? hintNode.id : null, ...attrs }),
    hintNode);
}

// --- login and logout -------------------------------------------------------------------

function forgetSession() {
  state.selected = null;
  replace($("room-detail"));
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WHO_KEY);
  sessionStorage.removeItem(KIND_KEY);
}

function showLogin(notice) {
  $("app").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("login-notice").textContent = notice || "";
  $("login-user").focus();
}

async function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("who").textContent = `Logged in as ${sessionStorage.getItem(WHO_KEY)}`;
  await refreshAll();
}

function startSession(bearer, who, kind) {
  sessionStorage.setItem(TOKEN_KEY, bearer);
  sessionStorage.setItem(WHO_KEY, who);
  sessionStorage.setItem(KIND_KEY, kind);
  for (const form of document.querySelectorAll("#login form")) form.reset();
  return showApp();
}

onSubmit($("login-matrix"), async (data) => {
  const user = String(data.get("user") || "").trim();
  const password = String(data.get("password") || "");
  if (!user || !password) throw new Error("Give your Matrix user name and password.");
  const answer = await request(`${PAGE}login`, "POST", { user, password });
  await startSession(answer.access_token, answer.user_id, "matrix");
  return "";
});

onSubmit($("login-secret"), async (data) => {
  const secret = String(data.get("secret") || "").trim();
  if (!secret) throw new Error("Give the provisioning secret.");
  // Whether the secret is right, the API itself says.
  await request(`${API}status`, "GET", undefined, secret);
  await startSession(secret, "operator (shared secret)", "secret");
  return "";
});

$("logout").addEventListener("click", async () => {
  const bearer = token();
  // A Matrix session is ended at the homeserver (through the bridge); the shared secret
  // has nothing to end, the page just forgets it.
  if (bearer && sessionStorage.getItem(KIND_KEY) === "matrix") {
    try { await request(`${PAGE}logout`, "POST", {}, bearer); } catch (err) { /* forgotten anyway */ }
  }
  forgetSession();
  showLogin("You are logged out.");
});

$("refresh").addEventListener("click", () => refreshAll());

// --- status and failed deliveries -------------------------------------------------------

async function loadStatus() {
  const body = $("status-body");
  let status;
  try {
    status = await api("GET", "status");
  } catch (err) {
    replace(body, el("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  state.networks = status.networks || {};
  const queues = status.queues || {};
  replace(body,
    el("p", {}, "Bridge version ", el("code", {}, status.version || "?")),
    el("table", { id: "networks" },
      el("caption", { class: "visually-hidden" }, "Network health"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Network"),
        el("th", { scope: "col" }, "Health"), el("th", { scope: "col" }, "Detail"))),
      el("tbody", {}, Object.entries(state.networks).map(([name, health]) =>
        el("tr", { "data-network": name }, el("td", {}, name),
          el("td", { class: health.ok ? "ok-badge" : "bad-badge" }, health.ok ? "OK" : "Problem"),
          el("td", {}, health.detail || ""))))),
    el("table", { id: "queues" },
      el("caption", { class: "visually-hidden" }, "Queues"),
      el("tbody", {},
        el("tr", {}, el("th", { scope: "row" }, "Waiting to be handled (inbox)"),
          el("td", { class: "num" }, queues.inbox ?? "?")),
        el("tr", {}, el("th", { scope: "row" }, "Waiting to be delivered (outbox)"),
          el("td", { class: "num" }, queues.outbox ?? "?")),
        el("tr", {}, el("th", { scope: "row" }, "Failed deliveries"),
          el("td", { class: "num", id: "failed-count" }, status.failed_deliveries ?? "?")))));
}

async function loadFailed() {
  const body = $("failed-body");
  let items;
  try {
    const answer = await api("GET", "failed");
    items = answer.failed || [];
  } catch (err) {
    replace(body, el("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  const form = el("form", { id: "failed-form", onsubmit: (e) => e.preventDefault() });
  const retry = (what) => async () => {
    const answer = await api("POST", "failed/retry", what);
    await Promise.all([loadStatus(), loadFailed()]);
    return answer.message || "Put back in the queue.";
  };
  if (!items.length) {
    form.append(el("p", {}, "No failed deliveries."));
  } else {
    form.append(
      el("table", {},
        el("thead", {}, el("tr", {}, ["#", "Room", "To", "Failed", "Why", ""].map(
          (h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, items.map((item) => el("tr", { "data-failed-id": item.id },
          el("td", { class: "num" }, item.id),
          el("td", {}, roomName(item.room_id)),
          el("td", {}, item.network || ""),
          el("td", {}, when(item.failed_at)),
          el("td", {}, item.error || ""),
          el("td", {}, actionButton("Retry", form, retry({ id: item.id }),
            { "aria-label": `Retry delivery ${item.id}` })))))),
      actionButton("Retry all", form, retry({})));
  }
  form.append(el("p", { class: "form-message" }));
  replace(body, form);
}

// --- rooms ------------------------------------------------------------------------------

async function loadRooms() {
  const body = $("rooms-body");
  try {
    const answer = await api("GET", "rooms");
    state.rooms = answer.rooms || [];
  } catch (err) {
    replace(body, el("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  fillRoomFilter();
  if (!state.rooms.length) {
    replace(body, el("p", {}, "The bridge bot is in no room yet. Invite it to a room ",
      "(and give it power level 100 there) to manage the room here."));
    return;
  }
  replace(body, el("table", { id: "room-list" },
    el("thead", {}, el("tr", {}, ["Room", "Department", "Links", ""].map(
      (h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, state.rooms.map((room) => el("tr", { "data-room-id": room.room_id },
      el("td", {}, roomLabel(room), el("br"), el("code", {}, room.room_id)),
      el("td", {}, room.department || ""),
      el("td", {}, (room.links || []).length
        ? el("ul", { class: "links" }, room.links.map((l) => el("li", {}, linkLabel(l))))
        : "not linked"),
      el("td", {}, el("button", {
        type: "button", class: "secondary", "aria-label": `Manage ${roomLabel(room)}`,
        onclick: () => selectRoom(room.room_id),
      }, "Manage")))))));
}

function fillRoomFilter() {
  const select = $("audit-room");
  const chosen = select.value;
  replace(select, el("option", { value: "" }, "all rooms"),
    state.rooms.map((room) => el("option", { value: room.room_id }, roomLabel(room))));
  select.value = state.rooms.some((r) => r.room_id === chosen) ? chosen : "";
}

async function selectRoom(roomId) {
  state.selected = roomId;
  await loadRoomDetail();
  const card = $("room-detail").querySelector("h3");
  if (card) card.focus();
}

// After a change in the selected room: its card, the list, the log and the status again.
async function roomChanged() {
  await Promise.all([loadRooms(), loadAudit(), loadStatus()]);
  await loadRoomDetail();
}

async function loadRoomDetail() {
  const container = $("room-detail");
  const roomId = state.selected;
  if (!roomId) { replace(container); return; }
  let room;
  try {
    room = await api("GET", roomPath(roomId));
  } catch (err) {
    replace(container, el("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  const links = room.links || [];
  const emailLink = links.find((l) => l.network === "email");
  const card = el("div", { class: "room-card", "data-room-id": roomId },
    el("h3", { tabindex: "-1" }, `Room: ${roomLabel(room) || roomId}`),
    el("p", {}, el("code", {}, roomId)));

  const linksForm = el("form", { id: "room-links", onsubmit: (e) => e.preventDefault() });
  linksForm.append(
    el("h4", {}, "Links"),
    links.length
      ? el("ul", { class: "links" }, links.map((link) => el("li", { "data-link": link.remote_id },
        linkLabel(link), " ",
        actionButton("Unlink", linksForm, () => unlink(roomId, link),
          { "aria-label": `Unlink ${linkLabel(link)}` }))))
      : el("p", {}, "Not linked yet."),
    el("p", { class: "form-message" }));
  card.append(linksForm);

  const forms = el("div", { class: "forms" });
  if (!state.linkSpecs) {
    try { await loadLinkSpecs(); } catch (err) { state.linkSpecs = null; }
  }
  for (const [network, spec] of Object.entries(state.linkSpecs || {}).sort()) {
    if (network in state.networks) forms.append(linkForm(roomId, network, spec));
  }
  // Email's own part of the API: the room address's subscribers and who may write to it.
  if (emailLink) forms.append(...await emailForms(roomId, room, emailLink));
  card.append(forms);
  replace(container, card);
}

async function unlink(roomId, link) {
  // A room may have several links of a network: the DELETE takes the PUT's fields to say
  // which, and a link in the API's answers carries them (Slack: channel and workspace).
  const spec = (state.linkSpecs || {})[link.network];
  const body = {};
  for (const name of Object.keys(spec ? spec.properties : { remote_id: {} })) {
    if (typeof link[name] === "string" && link[name]) body[name] = link[name];
  }
  const answer = await api("DELETE", `${roomPath(roomId)}/links/${link.network}`, body);
  await roomChanged();
  return answer.message || `Unlinked ${linkLabel(link)}.`;
}

// A link form per network, built from the network's own declaration of
// PUT /rooms/{room_id}/links/<network> in the API's OpenAPI document: its fields, which are
// required, what each means. A network added to the bridge gets its form without a change
// here.
function linkForm(roomId, network, spec) {
  const form = el("form", { id: `link-${network}`, class: "inline" },
    el("h4", {}, capitalized(spec.summary || `link the room to ${network}`)),
    Object.entries(spec.properties).map(([name, schema]) => field(
      `${capitalized(name.replaceAll("_", " "))}${spec.required.includes(name) ? "" : " (optional)"}`,
      name,
      { required: spec.required.includes(name) }, schema.description)),
    el("button", { type: "submit" }, `Link ${network}`),
    el("p", { class: "form-message" }));
  return onSubmit(form, async (data) => {
    const body = {};
    for (const name of Object.keys(spec.properties)) {
      const value = String(data.get(name) || "").trim();
      if (value) body[name] = value;
    }
    const answer = await api("PUT", `${roomPath(roomId)}/links/${network}`, body);
    await roomChanged();
    return answer.message || "Linked.";
  });
}

function capitalized(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

async function loadLinkSpecs() {
  // The document is public (it holds no data); asked once per page load.
  const doc = await request(`${API}openapi.json`, "GET");
  state.linkSpecs = {};
  for (const [path, operations] of Object.entries(doc.paths || {})) {
    const match = /^\/rooms\/\{room_id\}\/links\/([^/]+)$/.exec(path);
    if (!match || !operations.put) continue;
    const body = operations.put.requestBody || {};
    const schema = ((body.content || {})["application/json"] || {}).schema || {};
    state.linkSpecs[match[1]] = { summary: operations.put.summary,
      properties: schema.properties || {}, required: schema.required || [] };
  }
}

async function emailForms(roomId, room, emailLink) {
  // GET /rooms/{room_id} holds the email state; the subscribers' own endpoint is asked only
  // when it does not.
  let email = room.email || null;
  let problem = null;
  if (!email) {
    try {
      email = await api("GET", `${roomPath(roomId)}/email/subscribers`);
    } catch (err) {
      problem = err.message;
    }
  }
  const subscribers = (email && email.subscribers) || [];
  const subscriberPath = (address) =>
    `${roomPath(roomId)}/email/subscribers/${encodeURIComponent(address)}`;

  const list = el("form", { id: "subscribers", onsubmit: (e) => e.preventDefault() });
  list.append(
    el("h4", {}, `Subscribers of ${(email && email.address) || emailLink.remote_name
      || emailLink.remote_id}`),
    problem ? el("p", { class: "error", role: "alert" }, problem)
      : subscribers.length
        ? el("table", {}, el("thead", {}, el("tr", {},
          ["Address", "Name", "State", ""].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, subscribers.map((s) => el("tr", { "data-address": s.address },
            el("td", {}, s.address), el("td", {}, s.name || ""),
            el("td", {}, s.status === "paused"
              ? `paused after ${s.bounces} bounces (subscribe again to resume)`
              : s.status || ""),
            el("td", {}, actionButton("Unsubscribe", list, async () => {
              const answer = await api("DELETE", subscriberPath(s.address));
              await roomChanged();
              return answer.message || `Unsubscribed ${s.address}.`;
            }, { "aria-label": `Unsubscribe ${s.address}` }))))))
        : el("p", {}, "No subscribers yet."),
    el("p", { class: "form-message" }));

  const subscribe = onSubmit(el("form", { id: "subscribe", class: "inline" },
    el("h4", {}, "Subscribe an address"),
    field("Address to subscribe", "address", { type: "email", required: true,
      placeholder: "erika@example.org" }),
    field("Name (optional)", "name", { placeholder: "Erika Mustermann" }),
    el("button", { type: "submit" }, "Subscribe"),
    el("p", { class: "form-message" })), async (data) => {
    const address = String(data.get("address") || "").trim();
    if (!address) throw new Error("Give the address to subscribe.");
    const name = String(data.get("name") || "").trim();
    const answer = await api("PUT", subscriberPath(address), name ? { name } : {});
    await roomChanged();
    return answer.message || `Subscribed ${address}.`;
  });

  const policyName = (email && email.policy) || "subscribers";
  const policyDomain = (email && email.domain) || "";
  const select = el("select", { id: "policy-choice", name: "policy" },
    [["subscribers", "only subscribers may write"], ["open", "anyone may write"],
      ["domain", "anyone from one domain may write"]].map(([value, text]) =>
      el("option", { value, selected: value === policyName }, text)));
  const policy = onSubmit(el("form", { id: "policy", class: "inline" },
    el("h4", {}, "Who may write to the room's address"),
    el("div", {}, el("label", { for: "policy-choice" }, "Who may write"), select),
    field("Domain (for the domain policy)", "domain", { value: policyDomain,
      placeholder: "stadt.example" }),
    el("button", { type: "submit" }, "Set policy"),
    el("p", { class: "form-message" })), async (data) => {
    const body = { policy: String(data.get("policy")) };
    const domain = String(data.get("domain") || "").trim();
    if (body.policy === "domain") body.domain = domain;
    const answer = await api("PUT", `${roomPath(roomId)}/email/policy`, body);
    await roomChanged();
    return answer.message || "Policy set.";
  });
  return [list, subscribe, policy];
}

// --- audit log --------------------------------------------------------------------------

function details(entry) {
  return Object.entries(entry.details || {}).map(([k, v]) =>
    `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
}

async function loadAudit() {
  const form = $("audit-filter");
  const body = $("audit-body");
  const since = $("audit-since").value;
  const params = new URLSearchParams();
  if (since) params.set("since", since);
  if ($("audit-room").value) params.set("room_id", $("audit-room").value);
  let entries;
  try {
    const query = params.toString();
    entries = (await api("GET", `audit${query ? `?${query}` : ""}`)).entries || [];
    say(form, "", true);
  } catch (err) {
    say(form, err.message, false);
    return;
  }
  const newest = entries.slice(-200).reverse();
  replace(body, newest.length ? el("table", { id: "audit-table" },
    el("thead", {}, el("tr", {}, ["When", "Who", "From", "Room", "Action", "Details"].map(
      (h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, newest.map((e) => el("tr", { "data-action": e.action },
      el("td", {}, when(e.at)), el("td", {}, e.actor), el("td", {}, e.via),
      el("td", {}, roomName(e.room_id)), el("td", {}, e.action),
      el("td", { class: "mono" }, details(e))))))
    : el("p", {}, "Nothing recorded in this window."),
  entries.length > newest.length
    ? el("p", { class: "hint" }, `The newest ${newest.length} of ${entries.length} entries.`)
    : null);
}

onSubmit($("audit-filter"), async () => { await loadAudit(); return ""; });

// --- progress report --------------------------------------------------------------------

// The sides of a room in a fixed order: Matrix first, then the networks by name; each gets
// a colour class by its place.
function sidesOf(room) {
  const names = Object.keys(room.sides || {});
  return ["matrix", ...names.filter((n) => n !== "matrix").sort()].filter(
    (n) => names.includes(n) || n === "matrix");
}

// Messages per day and side as stacked bars: one bar per day, Matrix at the bottom.
function chart(room, sides) {
  const daily = room.daily || [];
  const barWidth = daily.length <= 14 ? 16 : daily.length <= 31 ? 8 : 4;
  const gap = 3;
  const height = 60;
  const top = 4;
  const bottom = 14;
  const width = Math.max(daily.length * (barWidth + gap) + gap, 60);
  const most = Math.max(1, ...daily.map((d) => sides.reduce((sum, s) => sum + (d[s] || 0), 0)));
  const total = (room.messages ?? 0);
  const title = `${roomLabel(room)}: ${total} messages in ${daily.length} days; ` +
    sides.map((s) => `${s} ${room.sides[s] ? room.sides[s].messages : 0}`).join(", ");
  const chartNode = svg("svg", {
    class: "chart", role: "img", "aria-label": title, width, height: height + top + bottom,
    viewBox: `0 0 ${width} ${height + top + bottom}`,
  }, svg("title", {}, title));
  chartNode.append(svg("line", { class: "axis", x1: 0, x2: width, y1: top + height,
    y2: top + height }));
  daily.forEach((day, index) => {
    const x = gap + index * (barWidth + gap);
    let y = top + height;
    sides.forEach((side, sideIndex) => {
      const count = day[side] || 0;
      if (!count) return;
      const h = Math.max(1, Math.round((count / most) * height));
      y -= h;
      const bar = svg("rect", { class: `side-${Math.min(sideIndex, 5)}`, x, y, width: barWidth,
        height: h, "data-side": side, "data-day": day.day });
      bar.append(svg("title", {}, `${day.day}, ${side}: ${count}`));
      chartNode.append(bar);
    });
    // A label under each day of a week or two; under every seventh of a longer window.
    if (daily.length <= 14 || index % 7 === 0) {
      chartNode.append(svg("text", { x: x + barWidth / 2, y: top + height + 11,
        "text-anchor": "middle" }, String(day.day || "").slice(8, 10)));
    }
  });
  return chartNode;
}

function legend(sides) {
  return el("div", { class: "legend", "aria-hidden": "true" }, sides.map((side, i) =>
    el("span", {}, el("span", { class: `swatch side-${Math.min(i, 5)}` }), side)));
}

function reportRoom(room) {
  const sides = sidesOf(room);
  return el("tr", { "data-room-id": room.room_id },
    el("td", {}, roomLabel(room), el("br"),
      el("span", { class: "hint" }, (room.links || []).map(linkLabel).join(", "))),
    el("td", {}, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Side"),
        el("th", { scope: "col", class: "num" }, "Messages"),
        el("th", { scope: "col", class: "num" }, "People"))),
      el("tbody", {}, sides.map((side) => el("tr", { "data-side": side },
        el("td", {}, side),
        el("td", { class: "num" }, room.sides[side] ? room.sides[side].messages : 0),
        el("td", { class: "num" }, room.sides[side] ? room.sides[side].people : 0)))))),
    el("td", { class: "num share" }, percent(room.matrix_share)),
    el("td", {}, chart(room, sides), legend(sides)));
}

async function loadReport() {
  const form = $("report-filter");
  const body = $("report-body");
  let report;
  try {
    report = await api("GET", `report?days=${encodeURIComponent($("report-days").value)}`);
    say(form, "", true);
  } catch (err) {
    say(form, err.message, false);
    return;
  }
  const departments = report.departments || [];
  const totals = report.totals || {};
  replace(body,
    el("p", {}, `From ${report.since || "?"} to ${report.until || "?"}: `,
      `${totals.messages ?? 0} messages, ${percent(totals.matrix_share)} written on Matrix.`),
    departments.length ? departments.map((dep) => el("div", { class: "department" },
      el("h3", {}, dep.name || "No department"),
      el("p", {}, `${(dep.totals || {}).messages ?? 0} messages, `,
        `${percent((dep.totals || {}).matrix_share)} on Matrix.`),
      el("table", { class: "report-rooms" },
        el("thead", {}, el("tr", {}, ["Room", "Sides", "On Matrix", "Messages per day"].map(
          (h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, (dep.rooms || []).map(reportRoom)))))
      : el("p", {}, "No linked rooms yet."));
}

onSubmit($("report-filter"), async () => { await loadReport(); return ""; });

// --- start ------------------------------------------------------------------------------

async function refreshAll() {
  await loadStatus();
  await loadRooms();
  await Promise.all([loadFailed(), loadAudit(), loadReport(), loadRoomDetail()]);
}

// Health, queues and failures change on their own: shown afresh every half minute while
// the page is in view (the API caches whose token it is, so this costs the homeserver
// nothing). Forms and the room card are left alone, so nothing typed is lost.
const STATUS_EVERY_MS = 30000;
setInterval(() => {
  if (token() && !document.hidden && !$("app").hidden) {
    loadStatus();
    loadFailed();
  }
}, STATUS_EVERY_MS);

if (token()) showApp(); else showLogin();
