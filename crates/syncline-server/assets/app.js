// The Syncline dashboard: sign-in with a bearer token, the caller's sync figures and devices, their imports
// (connect, start, stop, reset, live progress), and the admin overview. Plain ES module, no dependencies and
// no build step. Live updates come over `GET /v1/events` (read with fetch, because EventSource cannot send an
// Authorization header), with polling every 2 s while something moves or while the event stream is down.
// Every text from the server goes into the page as text, never as HTML.

const TOKEN_KEY = "syncline.token";
const POLL_MS = 2000;
const RATE_WINDOW_MS = 15000;

const $ = (id) => document.getElementById(id);
const nf = new Intl.NumberFormat();

const STATUS_LABELS = {
  none: "Not started",
  pending: "Pending",
  running: "Running",
  rate_limited: "Rate limited",
  stopped: "Stopped",
  error: "Error",
  success: "Done",
};

// Each stable `error_code` of an import, in words (docs/protocol.md, "Imports"); every code has one (the
// server's `every_import_error_code_has_a_dashboard_hint` test checks).
const ERROR_HINTS = {
  auth_expired: "The service refused the credential (it expired or was revoked): connect again, then press Start.",
  auth_revoked: "The service refused to renew access (the consent was revoked or expired): connect again, then press Start.",
  auth_client_refused: "The service refused this server's app credentials (client_id / client_secret): ask the operator to check them.",
  auth_no_xbox_account: "This Microsoft account has no Xbox profile: sign in once on xbox.com to create one, then connect again.",
  auth_child_account: "This is a child account: an adult must add it to a Microsoft family before it can use Xbox Live.",
  auth_region_unavailable: "Xbox Live is not available in this account's country or region.",
  auth_verification_required: "This account must complete adult verification on xbox.com, then connect again.",
  auth_refused: "The service refused to renew access: connect again, then press Start.",
  auth_scope_missing: "The service refused the permissions asked for: connect again, then press Start.",
  auth_npsso_refused: "PlayStation refused the NPSSO: sign in on playstation.com, copy a fresh NPSSO and connect again.",
  auth_not_configured: "This source's sign-in is not configured (client_id): ask the operator to configure it.",
  auth_unsupported: "This source cannot sign in this way: connect it with its credential form.",
  auth_misconfigured: "This source's sign-in configuration is not usable: ask the operator to check it.",
  profile_private:
    "The profile's privacy settings hide this: make the game details (Steam) or gaming activity (PlayStation) public, then press Start.",
  missing_permission:
    "The credential lacks a scope or permission this needs: connect again and grant it, then press Start.",
  tls_failed:
    "A secure connection to the service could not be made (its certificate was refused); the message says which host and why.",
  upstream_unavailable: "The service is down or did not answer; press Start to try again from the checkpoint.",
  upstream_failed: "The service refused the request; press Start to try again, or Reset.",
  invalid_rows: "The service sent rows that do not fit the table.",
};

const state = {
  token: null,
  me: null,
  sources: new Map(), // source name -> {data, el, rates}
  clockOffset: 0, // server time minus this browser's time
  sseUp: false,
  sseAbort: null,
  sseRetry: 0,
  pollTimer: null,
  tickTimer: null,
  adminTimer: null,
  refreshing: null,
};

// ----------------------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "offline", `cannot reach the server (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const code = json?.code ?? `http_${response.status}`;
    const message = json?.message ?? `the server answered ${response.status}`;
    const error = new ApiError(response.status, code, message);
    if (response.status === 401) signOut(`Your session ended: ${message}`);
    throw error;
  }
  return json;
}

// ----------------------------------------------------------------------------------------------------------
// Formatting

function serverNow() {
  return Date.now() + state.clockOffset;
}

function when(ms) {
  if (ms == null) return "never";
  const ago = Math.max(0, Math.round((serverNow() - ms) / 1000));
  const time = new Date(ms).toLocaleTimeString();
  if (ago < 60) return `${time} (${ago} s ago)`;
  if (ago < 3600) return `${time} (${Math.round(ago / 60)} min ago)`;
  return new Date(ms).toLocaleString();
}

/// A <time> element that the ticker keeps relative ("12 s ago").
function timeEl(ms) {
  const el = document.createElement("time");
  if (ms != null) {
    el.dateTime = new Date(ms).toISOString();
    el.dataset.at = String(ms);
  }
  el.textContent = when(ms);
  return el;
}

function setTime(el, ms) {
  el.replaceChildren(timeEl(ms));
}

function duration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("aria-") || k === "role" || k === "for") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function announce(text) {
  const a = $("announcer");
  a.textContent = "";
  // A fresh text node in the next frame is read out even when it repeats the last one.
  requestAnimationFrame(() => (a.textContent = text));
}

// ----------------------------------------------------------------------------------------------------------
// Sign-in

async function signIn(token, { quiet = false } = {}) {
  state.token = token;
  let me;
  try {
    me = await fetch("/v1/me", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (e) {
    return showSignIn(`Cannot reach the server: ${e.message}`);
  }
  const body = await me.json().catch(() => null);
  if (!me.ok) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    const message = body?.message ?? `the server answered ${me.status}`;
    const code = body?.code ? ` (${body.code})` : "";
    return showSignIn(quiet ? "" : `Sign-in failed${code}: ${message}.`);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.me = body;
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = body.user;
  $("who-admin").hidden = !body.admin;
  $("admin").hidden = !body.admin;
  $("admin-link").hidden = !body.admin;
  // An admin comes for everyone's picture first; their own sync and imports follow.
  if (body.admin) $("sync").before($("admin"));
  else $("imports").after($("admin"));
  $("sign-out").hidden = false;
  $("live").hidden = false;
  // Focus moves to the first heading, so a screen reader and the keyboard start where the content starts.
  $(body.admin ? "admin-h" : "sync-h").focus();
  renderMe(body);
  await Promise.allSettled([refreshActivity(), refreshImports(), body.admin ? refreshAdmin() : null]);
  startLive();
}

function showSignIn(message) {
  stopLive();
  $("app").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("live").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message ?? "";
  $("token").setAttribute("aria-invalid", message ? "true" : "false");
  if (message) $("token").focus();
}

function signOut(message) {
  state.token = null;
  state.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.sources.clear();
  $("sources").replaceChildren();
  $("token").value = "";
  showSignIn(message);
}

// ----------------------------------------------------------------------------------------------------------
// The sync panel

function renderMe(me) {
  const stats = me.stats;
  $("sequence").textContent = nf.format(stats.sequence);
  const rows = Object.entries(stats.tables).map(([name, t]) =>
    el(
      "tr",
      { dataset: { table: name } },
      el("th", { scope: "row" }, name),
      el("td", { class: "num records" }, nf.format(t.records)),
      el("td", { class: "num" }, nf.format(t.tombstones)),
    ),
  );
  $("tables-body").replaceChildren(...rows);
}

function renderActivity(body) {
  const a = body.activity;
  setTime($("last-push"), a.lastPushAt);
  setTime($("last-pull"), a.lastPullAt);
  $("requests").textContent = `${nf.format(a.pushes)} / ${nf.format(a.pulls)}`;
  $("moved").textContent = `${nf.format(a.recordsPushed)} / ${nf.format(a.recordsPulled)}`;
  $("rejected").textContent = nf.format(a.rejected);
  $("conflicts").textContent = nf.format(a.conflicts);
  const reported = a.devices.filter((d) => d.outboxPending != null);
  $("outbox").textContent = reported.length
    ? nf.format(reported.reduce((n, d) => n + d.outboxPending, 0))
    : "unknown";
  const rejection = $("last-rejection");
  rejection.hidden = !a.lastRejection;
  rejection.replaceChildren();
  if (a.lastRejection) rejection.append("Last rejection, ", timeEl(a.lastRejectionAt), `: ${a.lastRejection}`);
  $("no-devices").hidden = a.devices.length > 0;
  $("devices-table").hidden = a.devices.length === 0;
  $("devices-body").replaceChildren(
    ...a.devices.map((d) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, d.device),
        el("td", {}, timeEl(d.lastSeenAt)),
        el("td", {}, timeEl(d.lastPullAt)),
        el("td", {}, timeEl(d.lastPushAt)),
        el("td", { class: "num" }, d.outboxPending == null ? "unknown" : nf.format(d.outboxPending)),
      ),
    ),
  );
  $("my-chart").replaceChildren(...charts(body.series, body.now));
}

async function refreshActivity() {
  const [me, activity] = await Promise.all([api("GET", "/v1/me"), api("GET", "/v1/activity")]);
  state.me = me;
  state.clockOffset = activity.now - Date.now();
  renderMe(me);
  renderActivity(activity);
  $("sync-status").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
}

/// Refreshes the sync panel; overlapping calls share one request.
function refreshSync() {
  if (!state.refreshing) {
    state.refreshing = refreshActivity()
      .catch((e) => ($("sync-status").textContent = `Could not refresh: ${e.message}`))
      .finally(() => (state.refreshing = null));
  }
  return state.refreshing;
}

// ----------------------------------------------------------------------------------------------------------
// Imports

const streamKey = (s) => `${s.stream}:${s.phase}`;

function isActive(status) {
  return status === "pending" || status === "running" || status === "rate_limited";
}

async function refreshImports() {
  const body = await api("GET", "/v1/imports");
  state.clockOffset = body.now - Date.now();
  $("no-sources").hidden = body.sources.length > 0;
  const seen = new Set();
  for (const source of body.sources) {
    seen.add(source.source);
    renderSource(source);
  }
  for (const [name, entry] of state.sources) {
    if (!seen.has(name)) {
      entry.el.remove();
      state.sources.delete(name);
    }
  }
}

function sourceEntry(data) {
  let entry = state.sources.get(data.source);
  if (entry) return entry;
  const name = data.source;
  const id = `src-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const badge = el("span", { class: "badge", dataset: { status: "none" } });
  const conn = el("p", { class: "hint conn" });
  const fields = (data.fields ?? []).map((f) => {
    const input = el("input", { id: `${id}-${f}`, name: f, type: "password", autocomplete: "off", spellcheck: false });
    return { name: f, input, label: el("label", { for: input.id }, f) };
  });
  const json = el("textarea", {
    id: `${id}-json`,
    name: "json",
    rows: 3,
    spellcheck: false,
    placeholder: JSON.stringify(Object.fromEntries((data.fields ?? []).map((f) => [f, "…"]))),
  });
  const formError = el("p", { class: "error", role: "alert", id: `${id}-connect-error` });
  const formNotice = el("p", { class: "notice", role: "status" });
  if (new URLSearchParams(location.search).get("connected") === name) {
    formNotice.textContent = `Connected to ${name}. Press Start to import.`;
  }
  // Sources with a sign-in page (OAuth consent): the person approves there and comes back connected.
  const consent = data.consent
    ? el("button", { type: "button", class: "primary consent", dataset: { consent: name } }, `Connect ${name} with its sign-in page`)
    : null;
  consent?.addEventListener("click", async () => {
    formError.textContent = "";
    try {
      const body = await api("POST", `/v1/connections/${encodeURIComponent(name)}/authorize`);
      location.assign(body.url);
    } catch (e) {
      formError.textContent = `Could not start connecting ${name}: ${e.message}`;
    }
  });
  const hint =
    data.kind === "playstation"
      ? el(
          "p",
          { class: "hint" },
          "Sign in on playstation.com, then open https://ca.account.sony.com/api/v1/ssocookie in the same browser and copy the npsso value it shows.",
        )
      : data.kind === "xbox" && !data.consent
        ? el("p", { class: "hint" }, "Paste a Microsoft account refresh token (scopes Xboxlive.signin Xboxlive.offline_access).")
        : null;
  const form = el(
    "form",
    { class: "connect-form", noValidate: true, "aria-describedby": formError.id },
    el(
      "fieldset",
      {},
      el("legend", {}, `Credentials for ${name}`),
      ...(hint ? [hint] : []),
      ...fields.flatMap((f) => [f.label, f.input]),
      el("label", { for: json.id }, "Or paste the credential as JSON"),
      json,
    ),
    formError,
    el("button", { type: "submit", class: "primary" }, "Connect"),
  );
  const summary = el("summary", {}, "Connect");
  // Open while not connected; the person may close it, and later renders leave it as it is.
  const details = el(
    "details",
    { class: "connect", open: !data.connected },
    summary,
    ...(consent ? [consent, el("p", { class: "hint" }, "Or paste a token:")] : []),
    form,
  );
  const buttons = {};
  for (const action of ["start", "stop", "reset"]) {
    buttons[action] = el(
      "button",
      { type: "button", dataset: { action }, "aria-describedby": `${id}-h` },
      action[0].toUpperCase() + action.slice(1),
    );
    buttons[action].addEventListener("click", () => act(name, action));
  }
  const actionError = el("p", { class: "error", role: "alert" });
  const streams = el("ul", { class: "streams" });
  const article = el(
    "article",
    { class: "source", id, dataset: { source: name }, "aria-labelledby": `${id}-h` },
    el("h3", { id: `${id}-h` }, name, badge),
    conn,
    formNotice,
    details,
    el("div", { class: "actions" }, buttons.start, buttons.stop, buttons.reset),
    actionError,
    streams,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    connect(name, fields, json, formError, formNotice, details);
  });
  $("sources").append(article);
  entry = {
    el: article,
    badge,
    conn,
    summary,
    details,
    buttons,
    actionError,
    notice: formNotice,
    streams,
    streamEls: new Map(),
    rates: new Map(),
    data,
  };
  state.sources.set(name, entry);
  return entry;
}

function renderSource(data) {
  const entry = sourceEntry(data);
  entry.data = data;
  entry.conn.textContent = data.connected
    ? `Connected. Streams: ${Object.entries(data.tables ?? {}).map(([s, t]) => `${s} → ${t}`).join(", ")}.`
    : "Not connected: enter your credentials to import from this source.";
  entry.summary.textContent = data.connected ? "Replace credentials" : "Connect";
  const statuses = data.streams.map((s) => s.status);
  const overall = overallStatus(data.streams.map(shownStatus));
  entry.badge.dataset.status = overall;
  entry.badge.textContent = STATUS_LABELS[overall];
  const active = statuses.some(isActive);
  entry.buttons.start.disabled = !data.connected || statuses.every(isActive);
  entry.buttons.stop.disabled = !active;
  entry.buttons.reset.disabled = statuses.every((s) => s === "none");
  const keys = new Set(data.streams.map(streamKey));
  for (const [key, node] of entry.streamEls) {
    if (!keys.has(key)) {
      node.li.remove();
      entry.streamEls.delete(key);
    }
  }
  for (const stream of data.streams) renderStream(entry, stream);
}

function overallStatus(statuses) {
  for (const s of ["error", "rate_limited", "running", "pending", "stopped", "success"]) {
    if (statuses.includes(s)) return s;
  }
  return "none";
}

function streamEl(entry, stream) {
  const key = streamKey(stream);
  let node = entry.streamEls.get(key);
  if (node) return node;
  const table = entry.data.tables?.[stream.stream];
  const label = `${stream.stream}${stream.phase === "incremental" ? " (new items)" : ""}`;
  const badge = el("span", { class: "badge", dataset: { status: "none" } });
  const fill = el("div", { class: "fill" });
  const bar = el(
    "div",
    {
      class: "bar",
      role: "progressbar",
      "aria-label": `${entry.data.source} ${label} progress`,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": "0",
    },
    fill,
  );
  const figures = el("p", { class: "figures" });
  const message = el("p", { class: "message" });
  const li = el(
    "li",
    { class: "stream", dataset: { stream: stream.stream, phase: stream.phase } },
    el("div", { class: "stream-head" }, el("span", { class: "stream-name" }, label), table ? el("span", { class: "hint" }, `→ ${table}`) : null, badge),
    bar,
    figures,
    message,
  );
  entry.streams.append(li);
  node = { li, badge, bar, fill, figures, message, last: null };
  entry.streamEls.set(key, node);
  return node;
}

/// Items per second over the last seconds of samples of `processed`, or null.
function rateOf(entry, stream) {
  const key = streamKey(stream);
  let samples = entry.rates.get(key) ?? [];
  const now = Date.now();
  const last = samples[samples.length - 1];
  if (last && stream.processed < last.processed) samples = []; // a new walk
  if (!last || last.processed !== stream.processed) samples.push({ t: now, processed: stream.processed });
  samples = samples.filter((s) => now - s.t <= RATE_WINDOW_MS || s === samples[samples.length - 1]);
  entry.rates.set(key, samples);
  if (samples.length >= 2) {
    const a = samples[0];
    const b = samples[samples.length - 1];
    if (b.t - a.t >= 300) return ((b.processed - a.processed) * 1000) / (b.t - a.t);
  }
  if (stream.started_at && stream.updated_at > stream.started_at && stream.processed > 0) {
    return (stream.processed * 1000) / (stream.updated_at - stream.started_at);
  }
  return null;
}

/// What the badge says: the server's status (`running` while a step walks the stream on some instance).
function shownStatus(stream) {
  return stream.status;
}

function renderStream(entry, stream) {
  const node = streamEl(entry, stream);
  const previous = node.last;
  node.last = stream;
  const status = shownStatus(stream);
  node.li.dataset.status = status;
  node.badge.dataset.status = status;
  node.badge.textContent = STATUS_LABELS[status] ?? status;
  const pct = stream.progress ?? 0;
  node.bar.setAttribute("aria-valuenow", String(pct));
  const total = stream.total_estimated;
  const counted = total != null ? `${nf.format(stream.processed)} of ${nf.format(total)} items` : `${nf.format(stream.processed)} items`;
  node.bar.setAttribute("aria-valuetext", `${pct}%, ${counted}`);
  node.fill.style.width = `${pct}%`;
  const parts = [`${pct}%`, total != null ? `${nf.format(stream.processed)} / ${nf.format(total)}` : `${nf.format(stream.processed)} / ?`];
  const rate = isActive(stream.status) ? rateOf(entry, stream) : null;
  if (rate != null && rate > 0) {
    parts.push(`${rate >= 10 ? nf.format(Math.round(rate)) : rate.toFixed(1)} items/s`);
    if (total != null && total > stream.processed) parts.push(`about ${duration((total - stream.processed) / rate)} left`);
  }
  node.figures.textContent = parts.join(" · ");
  node.message.replaceChildren(...streamMessage(entry, stream));
  node.message.className = `message ${stream.status === "error" ? "error" : stream.status === "rate_limited" ? "warning" : ""}`;
  if (previous && previous.status !== stream.status) {
    const text = `${entry.data.source} ${stream.stream}: ${STATUS_LABELS[stream.status]}`;
    announce(stream.status === "error" ? `${text}. ${stream.error ?? ""}` : text);
  }
}

function streamMessage(entry, stream) {
  switch (stream.status) {
    case "none":
      return [entry.data.connected ? "Not started yet: press Start." : "Connect, then press Start."];
    case "pending":
    case "running":
      return stream.processed > 0 ? ["Importing…"] : ["Waiting for the import runner…"];
    case "rate_limited": {
      const countdown = el("span", { class: "countdown", dataset: { until: String(stream.rate_limit_reset_at ?? 0) } });
      updateCountdown(countdown);
      return [`Rate limited by ${entry.data.source}: resumes automatically in `, countdown, "."];
    }
    case "stopped":
      return [`Stopped at ${stream.progress}% (${nf.format(stream.processed)} items). Start resumes from the checkpoint.`];
    case "error": {
      const hint = ERROR_HINTS[stream.error_code] ?? "Press Start to try again.";
      return [
        el("strong", {}, `Failed (${stream.error_code ?? "error"}): `),
        `${stream.error ?? "the import failed"}. ${hint}`,
      ];
    }
    case "success": {
      const outcome = (entry.data.outcomes ?? []).find(
        (o) => o.stream === stream.stream && o.phase === stream.phase && o.walkStartedAt === stream.started_at,
      );
      const what = outcome
        ? ` (${nf.format(outcome.upserted)} new or changed, ${nf.format(outcome.unchanged)} unchanged${outcome.deleted ? `, ${nf.format(outcome.deleted)} deleted` : ""})`
        : "";
      return [`Imported ${nf.format(stream.processed)} items${what}, finished `, timeEl(stream.completed_at), "."];
    }
    default:
      return [];
  }
}

function updateCountdown(node) {
  // Rounded, not ceiled: a Retry-After of 4 s reads "4 s" although a few ms of clock skew remain.
  const left = Math.round((Number(node.dataset.until) - serverNow()) / 1000);
  node.textContent = left > 0 ? duration(left) : "a moment";
}

/// Applies one import state that arrived over the event stream.
function applyImportEvent(stream) {
  const entry = state.sources.get(stream.source);
  if (!entry) return;
  const streams = entry.data.streams;
  const i = streams.findIndex((s) => streamKey(s) === streamKey(stream));
  const before = i >= 0 ? streams[i] : null;
  if (i >= 0) streams[i] = stream;
  else streams.push(stream);
  renderSource(entry.data);
  // A walk that ended: fetch its outcome (what changed) and the records it brought.
  if (before?.status !== stream.status && !isActive(stream.status)) {
    refreshImports().catch(() => {});
    refreshSync();
  }
}

async function act(source, action) {
  const entry = state.sources.get(source);
  entry.actionError.textContent = "";
  entry.notice.textContent = "";
  entry.buttons[action].disabled = true;
  try {
    const body = await api("POST", `/v1/imports/${encodeURIComponent(source)}/${action}`);
    state.clockOffset = body.now - Date.now();
    renderSource(body);
    announce(`${source}: ${action} requested`);
  } catch (e) {
    entry.actionError.textContent = `Could not ${action} ${source}: ${e.message}`;
    renderSource(entry.data);
  }
  schedulePoll();
}

async function connect(source, fields, json, errorEl, noticeEl, details) {
  errorEl.textContent = "";
  noticeEl.textContent = "";
  let credential;
  const pasted = json.value.trim();
  if (pasted) {
    try {
      credential = JSON.parse(pasted);
    } catch (e) {
      errorEl.textContent = `The pasted credential is not valid JSON: ${e.message}`;
      json.setAttribute("aria-invalid", "true");
      json.focus();
      return;
    }
    if (credential === null || typeof credential !== "object" || Array.isArray(credential)) {
      errorEl.textContent = `The pasted credential must be a JSON object, like ${json.placeholder}`;
      json.setAttribute("aria-invalid", "true");
      json.focus();
      return;
    }
  } else {
    credential = {};
    for (const f of fields) {
      const v = f.input.value.trim();
      if (v) credential[f.name] = v;
    }
    if (Object.keys(credential).length === 0) {
      const names = fields.map((f) => f.name).join(" and ");
      errorEl.textContent = `Enter ${names || "the credential"}, or paste the credential as JSON.`;
      (fields[0]?.input ?? json).focus();
      return;
    }
  }
  json.removeAttribute("aria-invalid");
  try {
    await api("PUT", `/v1/connections/${encodeURIComponent(source)}`, JSON.stringify(credential));
  } catch (e) {
    errorEl.textContent = `Could not connect ${source}: ${e.message}`;
    return;
  }
  for (const f of fields) f.input.value = "";
  json.value = "";
  const entry = state.sources.get(source);
  details.open = false;
  noticeEl.textContent = `Connected to ${source}. Press Start to import.`;
  await refreshImports().catch(() => {});
  entry.buttons.start.focus();
}

// ----------------------------------------------------------------------------------------------------------
// Charts (inline SVG)

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

/// Buckets of the series over the last hour (per minute), or the last 24 hours (per hour) when older data
/// exists.
function binned(series, now) {
  const minute = series.bucketMs;
  const oldest = series.buckets[0]?.at ?? now;
  const [width, count] = now - oldest <= 60 * minute ? [minute, 60] : [60 * minute, 24];
  const end = now - (now % width) + width;
  const start = end - width * count;
  const bins = Array.from({ length: count }, (_, i) => ({ at: start + i * width, synced: 0, imported: 0 }));
  for (const b of series.buckets) {
    const i = Math.floor((b.at - start) / width);
    if (i >= 0 && i < count) {
      bins[i].synced += b.pushed + b.pulled;
      bins[i].imported += b.imported;
    }
  }
  return { bins, width };
}

function chart(title, cls, bins, key, width) {
  const w = 360;
  const h = 120;
  const pad = { l: 34, b: 18, t: 8 };
  const max = Math.max(1, ...bins.map((b) => b[key]));
  const total = bins.reduce((n, b) => n + b[key], 0);
  const bw = (w - pad.l) / bins.length;
  const unit = width >= 3600000 ? "hour" : "minute";
  const caption = `${title}: ${nf.format(total)} in the last ${bins.length} ${unit}s (peak ${nf.format(Math.max(...bins.map((b) => b[key])))} per ${unit}).`;
  const bars = bins
    .filter((b) => b[key] > 0)
    .map((b) => {
      const i = bins.indexOf(b);
      const bh = ((h - pad.b - pad.t) * b[key]) / max;
      return svg(
        "rect",
        { class: `bar ${cls}`, x: pad.l + i * bw + 1, y: h - pad.b - bh, width: Math.max(1, bw - 2), height: bh, "data-value": b[key] },
        svg("title", {}, `${new Date(b.at).toLocaleTimeString()}: ${nf.format(b[key])}`),
      );
    });
  const label = (x, y, text, anchor = "start") => {
    const t = svg("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    return t;
  };
  const graphic = svg(
    "svg",
    { class: `chart chart-${cls}`, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": caption },
    svg("line", { class: "axis", x1: pad.l, y1: h - pad.b, x2: w, y2: h - pad.b }),
    svg("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b }),
    label(pad.l - 4, pad.t + 8, nf.format(max), "end"),
    label(pad.l - 4, h - pad.b, "0", "end"),
    label(pad.l, h - 4, new Date(bins[0].at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
    label(w, h - 4, "now", "end"),
    ...bars,
  );
  return el("figure", { class: "chart-figure", dataset: { series: cls, total: String(total) } }, graphic, el("figcaption", {}, caption));
}

function charts(series, now) {
  const { bins, width } = binned(series, now);
  return [chart("Records synced (pushed and pulled)", "synced", bins, "synced", width), chart("Records imported", "imported", bins, "imported", width)];
}

// ----------------------------------------------------------------------------------------------------------
// Admin

async function refreshAdmin() {
  const body = await api("GET", "/v1/admin/overview");
  const users = body.users;
  const order = ["error", "rate_limited", "running", "pending", "stopped", "success", "none"];
  const byStatus = Object.entries(body.importsByStatus)
    .sort(([a], [b]) => order.indexOf(a) - order.indexOf(b))
    .map(([s, n]) => `${n} ${(STATUS_LABELS[s] ?? s).toLowerCase()}`)
    .join(", ");
  $("admin-summary").textContent = `${users.length} user(s) with activity; imports: ${byStatus || "none"}. Updated ${new Date().toLocaleTimeString()}.`;
  $("admin-chart").replaceChildren(...charts(body.series, body.now));
  $("admin-no-imports").hidden = body.imports.length > 0;
  $("admin-imports").hidden = body.imports.length === 0;
  $("admin-imports-body").replaceChildren(
    ...body.imports.map((s) =>
      el(
        "tr",
        { dataset: { user: s.user, source: s.source, status: s.status } },
        el("th", { scope: "row" }, s.user),
        el("td", {}, s.source),
        el("td", {}, `${s.stream}${s.phase === "incremental" ? " (new items)" : ""}`),
        el("td", {}, el("span", { class: "badge", dataset: { status: s.status } }, STATUS_LABELS[s.status] ?? s.status)),
        el("td", { class: "num" }, `${s.progress}% (${nf.format(s.processed)}${s.total_estimated != null ? ` / ${nf.format(s.total_estimated)}` : ""})`),
        el("td", {}, timeEl(s.updated_at)),
        el("td", { class: s.error ? "error" : "" }, s.error ? `${s.error_code}: ${s.error}` : ""),
      ),
    ),
  );
  $("admin-users-body").replaceChildren(
    ...users.map((u) =>
      el(
        "tr",
        { dataset: { user: u.user } },
        el("th", { scope: "row" }, u.user),
        el("td", {}, timeEl(u.lastPullAt)),
        el("td", {}, timeEl(u.lastPushAt)),
        el("td", { class: "num" }, `${nf.format(u.pushes)} / ${nf.format(u.pulls)}`),
        el("td", { class: "num" }, nf.format(u.rejected)),
        el("td", { class: "num" }, nf.format(u.conflicts)),
        el("td", {}, u.devices.map((d) => d.device).join(", ") || "–"),
        el("td", {}, u.lastRejection ?? ""),
      ),
    ),
  );
}

/// Refreshes the admin view at most once a second, however many events arrive.
function scheduleAdmin() {
  if (!state.me?.admin || state.adminTimer) return;
  state.adminTimer = setTimeout(() => {
    state.adminTimer = null;
    refreshAdmin().catch((e) => ($("admin-summary").textContent = `Could not refresh: ${e.message}`));
  }, 1000);
}

// ----------------------------------------------------------------------------------------------------------
// Live updates: the event stream, polling, and the one-second ticker

function setLive(mode) {
  const live = $("live");
  live.dataset.state = mode;
  live.textContent = mode === "live" ? "Live updates" : "Live updates unavailable: checking every 2 s";
}

function dispatch(event, data) {
  let payload = {};
  try {
    payload = data ? JSON.parse(data) : {};
  } catch {
    return;
  }
  if (event === "ready") {
    state.sseUp = true;
    state.sseRetry = 0;
    setLive("live");
  } else if (event === "changes") {
    refreshSync();
    scheduleAdmin();
  } else if (event === "import") {
    // Admins hear about everyone's imports: only the caller's own move their import panel.
    if (payload.user === state.me?.user) applyImportEvent(payload);
    scheduleAdmin();
  }
}

async function sseLoop() {
  const abort = new AbortController();
  state.sseAbort = abort;
  try {
    const response = await fetch("/v1/events", {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
      signal: abort.signal,
      cache: "no-store",
    });
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}));
      signOut(`Your session ended: ${body.message ?? "the token was refused"}`);
      return;
    }
    if (!response.ok || !response.body) throw new Error(`events answered ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) dispatch(event, data.join("\n"));
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (abort.signal.aborted || !state.token) return;
  // The stream ended or failed: poll meanwhile, and try again with a growing delay.
  state.sseUp = false;
  setLive("polling");
  schedulePoll();
  state.sseRetry = Math.min(state.sseRetry + 1, 5);
  setTimeout(() => state.token && !abort.signal.aborted && sseLoop(), 1000 * 2 ** state.sseRetry);
}

function anythingActive() {
  for (const entry of state.sources.values()) {
    if (entry.data.streams.some((s) => isActive(s.status))) return true;
  }
  return false;
}

/// Polls every 2 s while an import moves or while the event stream is down; stops by itself otherwise.
function schedulePoll() {
  if (state.pollTimer || !state.token) return;
  state.pollTimer = setTimeout(async () => {
    state.pollTimer = null;
    if (!state.token) return;
    const down = !state.sseUp;
    if (down || anythingActive()) {
      const work = [refreshImports()];
      if (down) work.push(refreshSync());
      if (state.me?.admin) work.push(refreshAdmin());
      await Promise.allSettled(work);
    }
    if (down || anythingActive()) schedulePoll();
  }, POLL_MS);
}

function tick() {
  for (const node of document.querySelectorAll(".countdown")) updateCountdown(node);
  for (const node of document.querySelectorAll("time[data-at]")) node.textContent = when(Number(node.dataset.at));
  // Rate-limited imports resume by themselves: look again once the reset time has passed.
  if (anythingActive()) schedulePoll();
}

function startLive() {
  stopLive();
  setLive("polling");
  sseLoop();
  schedulePoll();
  state.tickTimer = setInterval(tick, 1000);
}

function stopLive() {
  state.sseAbort?.abort();
  state.sseAbort = null;
  state.sseUp = false;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  clearInterval(state.tickTimer);
  state.tickTimer = null;
  clearTimeout(state.adminTimer);
  state.adminTimer = null;
}

// ----------------------------------------------------------------------------------------------------------
// Start

function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
    if (!token) {
      showSignIn("Paste a token first.");
      return;
    }
    $("sign-in-error").textContent = "";
    signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("refresh").addEventListener("click", () => {
    refreshSync();
    refreshImports().catch(() => {});
  });
  $("admin-refresh").addEventListener("click", () => refreshAdmin().catch(() => {}));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved, { quiet: true });
  else showSignIn("");
}

start();
