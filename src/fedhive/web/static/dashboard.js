// The dashboard's one script. Pages are shells; this fills them from the REST API with the bearer
// token kept in sessionStorage, and refreshes them on server-sent events (/ui/events) only.
"use strict";
(() => {
  const TOKEN = "fedhive.token";
  const $ = (sel) => document.querySelector(sel);
  const page = document.body.dataset.page;
  const sessionId = document.body.dataset.session;
  const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // Sign in, then come back here: the sign-in page keeps this page only if the server finds it
  // one of the dashboard's own (routes.same_site_page), and goes to /ui otherwise.
  function toSignin() {
    const here = location.pathname + location.search;
    location.href = here === "/ui" ? "/ui/signin" : `/ui/signin?next=${encodeURIComponent(here)}`;
  }

  function showError(message) {
    const el = $("#error");
    el.textContent = message;
    el.hidden = false;
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    const token = sessionStorage.getItem(TOKEN);
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(path, { ...options, headers });
    if (r.status === 401 && page !== "signin") {
      toSignin();
      throw new Error("not signed in");
    }
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? r.statusText);
      throw new Error(`${r.status}: ${detail}`);
    }
    return r;
  }
  const getJSON = async (path) => (await api(path)).json();

  // Coalesces a burst of events (every client's update in a round) into one refresh.
  function debounced(fn, ms = 150) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(() => fn().catch((e) => showError(e.message)), ms);
    };
  }

  function listen(session, handlers) {
    const q = new URLSearchParams({ token: sessionStorage.getItem(TOKEN) || "" });
    if (session) q.set("session", session);
    const source = new EventSource(`/ui/events?${q}`);
    for (const [type, fn] of Object.entries(handlers)) {
      source.addEventListener(type, (e) => fn(JSON.parse(e.data)));
    }
    return source;
  }

  // -- sign in -------------------------------------------------------------------------------
  async function signin(form, create) {
    const creds = { email: form.email.value, password: form.password.value };
    const json = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(creds) };
    if (create) await api("/auth/signup", json);
    const token = (await (await api("/auth/signin", json)).json()).access_token;
    sessionStorage.setItem(TOKEN, token);
    location.href = document.body.dataset.next || "/ui"; // checked by the server
  }

  function initSignin() {
    sessionStorage.removeItem(TOKEN);
    const form = $("#signin-form");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      signin(form, false).catch((err) => showError(err.message));
    });
    $("#signup").addEventListener("click", () => signin(form, true).catch((err) => showError(err.message)));
  }

  // -- sessions -------------------------------------------------------------------------------
  // A session's name as the lists show it: the one it was given, else what it trains
  const what = (s) => (s.app === "builtin" ? s.config.model : `app ${s.app}`);
  const nameOf = (s) => s.name || `${what(s)} · ${s.config.strategy}`;

  async function loadSessions() {
    const rows = await getJSON("/ui/data/sessions");
    $("#sessions tbody").innerHTML = rows
      .map(({ session: s, key_metric: k }) => {
        const key = k ? `${esc(k.name)} <b>${fedhiveCharts.short(k.value, 4)}</b> <span class="muted">r${k.round}</span>` : "–";
        return `<tr id="session-${esc(s.id)}"><td><a href="/ui/sessions/${esc(s.id)}" class="${s.name ? "" : "unnamed"}">${esc(nameOf(s))}</a>
        <div class="muted small">${esc(s.id)}</div></td>
        <td><span class="badge ${esc(s.status)}">${esc(s.status)}</span></td><td class="key">${key}</td>
        <td>${s.rounds_done} / ${s.rounds_total}</td><td>${esc(what(s))}</td>
        <td>${esc(s.config.strategy)}</td><td>${new Date(s.created_at).toLocaleString()}</td></tr>`;
      })
      .join("");
  }

  function initSessions() {
    const refresh = debounced(loadSessions);
    refresh();
    listen(null, { round: refresh, completed: refresh, failed: refresh, cancelled: refresh });
  }

  // The installed apps (GET /apps), builtin first. Another app reads its own data at each site:
  // the data and model fields feed the builtin app only, so they are hidden and left out.
  async function loadApps(form) {
    const apps = await getJSON("/apps");
    apps.sort((a, b) => (b.name === "builtin") - (a.name === "builtin"));
    const select = $("#app");
    select.innerHTML = apps.map((a) => `<option value="${esc(a.name)}">${esc(a.name)}</option>`).join("");
    const byName = Object.fromEntries(apps.map((a) => [a.name, a]));
    const show = () => {
      const app = byName[select.value];
      const builtin = select.value === "builtin";
      for (const el of form.querySelectorAll(".builtin-only")) {
        el.hidden = !builtin;
        for (const input of el.querySelectorAll("input")) input.disabled = !builtin;
      }
      $("#run-config-field").hidden = builtin;
      $("#run-config").disabled = builtin;
      $("#run-config").placeholder = app && Object.keys(app.run_config).length ? JSON.stringify(app.run_config) : "{}";
      $("#app-info").textContent = app
        ? `code ${app.digest} · ${app.hooks.join(", ")}${builtin ? " · trains on the data below" : " · each site reads its own data"}`
        : "";
    };
    select.addEventListener("change", show);
    show();
  }

  // Combiners are a hierarchical session's only: the field is shown, and sent, for it alone.
  function initTopology() {
    const select = $("#topology");
    const show = () => {
      const hierarchical = select.value === "hierarchical";
      $("#combiners-field").hidden = !hierarchical;
      $("#combiners").disabled = !hierarchical;
    };
    select.addEventListener("change", show);
    show();
  }

  function initNew() {
    const form = $("#new-session");
    loadApps(form).catch((err) => showError(err.message));
    initTopology();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      for (const [k, v] of [...data.entries()]) if (v === "") data.delete(k);
      try {
        const s = await (await api("/sessions/start", { method: "POST", body: data })).json();
        location.href = `/ui/sessions/${s.id}`;
      } catch (err) {
        showError(err.message);
      }
    });
  }

  // -- one session: what it is, a chart per metric, box plots, per-client curves, combiners ----
  const ACTIVE = ["PENDING", "RUNNING"];

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "not started";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) [n, i] = [n / 1000, i + 1];
    return `${i ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[i]}`;
  }

  function infoList(d) {
    const i = d.info;
    const entry = (key, label, value) => `<div data-key="${key}"><dt>${esc(label)}</dt><dd>${value}</dd></div>`;
    const pairs = (obj) => Object.entries(obj).map(([k, v]) => `<span class="pair">${esc(k)} <b>${esc(v)}</b></span>`).join(" ") || "–";
    return [
      entry("app", "App", `${esc(i.app)}${i.app_digest ? ` <span class="muted">code ${esc(i.app_digest)}</span>` : ""}`),
      i.model ? entry("model", "Model", esc(i.model)) : "",
      entry("strategy", "Strategy", esc(i.strategy)),
      entry("hyperparameters", "Hyperparameters", pairs(i.hyperparameters)),
      Object.keys(i.run_config).length ? entry("run-config", "App settings", pairs(i.run_config)) : "",
      entry("dataset", "Data", esc(i.dataset)),
      entry("duration", "Duration", esc(duration(i.duration_s))),
      entry("bytes", "Bytes per round", `${esc(bytes(i.bytes_per_round))}${i.bytes_per_round !== null ? " <span class='muted'>(mean, received)</span>" : ""}`),
      entry("ended", "Ended", esc(i.ended ?? "still going")),
      `<div data-key="mlflow" id="mlflow"${mlflowState.shown ? "" : " hidden"}><dt>MLflow run</dt><dd>${mlflowState.html}</dd></div>`,
    ].join("");
  }

  // The session's MLflow run (when the platform tracks sessions): asked for on the first load and
  // whenever the session ends, not on every round.
  const mlflowState = { shown: false, html: "", askedFor: null };
  async function loadMlflow(status) {
    if (mlflowState.askedFor === status) return;
    mlflowState.askedFor = status;
    const m = await getJSON(`/ui/data/sessions/${encodeURIComponent(sessionId)}/mlflow`);
    mlflowState.shown = m.configured;
    if (!m.configured) return;
    if (m.run_id && m.url) {
      mlflowState.html = `<a id="mlflow-link" href="${esc(m.url)}" target="_blank" rel="noopener noreferrer">${esc(m.run_id)}</a> <span class="muted">${esc(m.status)}</span>`;
    } else if (m.run_id) {
      mlflowState.html = `<code>${esc(m.run_id)}</code> <span class="muted">${esc(m.status)} · a local store: open it with mlflow ui</span>`;
    } else {
      mlflowState.html = `<span class="muted">${esc(m.error ?? "no run yet")}</span>`;
      mlflowState.askedFor = null; // ask again on the next refresh
    }
    const el = $("#mlflow");
    if (el) {
      el.hidden = false;
      el.querySelector("dd").innerHTML = mlflowState.html;
    }
  }

  async function loadSession() {
    const d = await getJSON(`/ui/data/sessions/${encodeURIComponent(sessionId)}`);
    const s = d.session;
    document.title = `fedhive · ${nameOf(s)}`;
    $("#name").textContent = s.name || "Session";
    $("#status").textContent = s.status;
    $("#status").className = `badge ${s.status}`;
    $("#progress").textContent = `round ${s.rounds_done} of ${s.rounds_total} · ${what(s)} · strategy ${s.config.strategy}`;
    $("#app").textContent = s.app;
    $("#cancel").hidden = !ACTIVE.includes(s.status);
    $("#delete").hidden = ACTIVE.includes(s.status); // the API answers 409 for a live session
    $("#info").innerHTML = infoList(d);
    if (d.rounds.length) {
      fedhiveCharts.lines($("#charts"), d.charts, d.rounds);
      const traffic = { metric: "bytes received", series: [{ label: "bytes", values: d.bytes }] };
      fedhiveCharts.lines($("#traffic"), d.bytes.some((b) => b !== null) ? [traffic] : [], d.rounds);
    }
    fedhiveCharts.lines($("#curves"), d.curves.charts, d.curves.rounds);
    $("#curves-note").textContent = d.curves.total > d.curves.shown ? `(the first ${d.curves.shown} of ${d.curves.total} clients)` : "";
    fedhiveCharts.boxPlots($("#boxes"), d.boxes);
    const hierarchical = d.combiners.length > 0;
    $("#hierarchy").hidden = !hierarchical;
    $("#combiners tbody").innerHTML = d.combiners
      .map(
        (c) => `<tr><td>${esc(c.combiner_id)}</td><td>${c.clients.length}</td><td>${c.clients.map(esc).join(", ")}</td>
        <td>${c.rounds}</td><td>${c.last_round}</td><td>${c.num_examples}</td></tr>`,
      )
      .join("");
    const perCombiner = d.combiner_boxes.flatMap((c) =>
      c.charts.map((b) => ({ ...b, key: `${c.combiner}/${b.metric}`, title: `${c.combiner} · ${c.clients} clients · ${b.metric}` })),
    );
    fedhiveCharts.boxPlots($("#combiner-boxes"), perCombiner);
    const columns = ["Client", ...(hierarchical ? ["Combiner"] : []), "Rounds", "Last round", "Status", "Examples", ...d.client_metrics];
    $("#clients thead tr").innerHTML = columns.map((c) => `<th>${esc(c)}</th>`).join("");
    $("#clients tbody").innerHTML = d.clients
      .map(
        (c) => `<tr><td>${esc(c.client_id)}</td>${hierarchical ? `<td>${esc(c.via ?? "–")}</td>` : ""}<td>${c.rounds}</td><td>${c.last_round}</td>
        <td>${esc(c.status)}</td><td>${c.num_examples}</td>${d.client_metrics.map((m) => `<td>${fedhiveCharts.short(c.metrics[m] ?? null, 4)}</td>`).join("")}</tr>`,
      )
      .join("");
    const m = s.final_model;
    $("#final-model").innerHTML = m ? `Final model: <a href="/ui/models">${esc(m.name)} v${m.version}</a>` : "";
    await loadMlflow(ACTIVE.includes(s.status) ? "live" : s.status);
  }

  function initSession() {
    const refresh = debounced(loadSession);
    refresh();
    listen(sessionId, { round: refresh, update: refresh, completed: refresh, failed: refresh, cancelled: refresh });
    const path = `/sessions/${encodeURIComponent(sessionId)}`;
    $("#cancel").addEventListener("click", async () => {
      if (!confirm("Cancel this session? Its training stops now and its sites are released.")) return;
      try {
        await api(`${path}/cancel`, { method: "POST" });
        refresh(); // the live feed says so too; this page need not wait for it
      } catch (err) {
        showError(err.message);
      }
    });
    $("#delete").addEventListener("click", async () => {
      if (!confirm("Delete this session with its rounds and results? Models it registered stay.")) return;
      try {
        await api(path, { method: "DELETE" });
        location.href = "/ui";
      } catch (err) {
        showError(err.message);
      }
    });
  }

  // -- sites and models ----------------------------------------------------------------------
  async function loadSites() {
    const sites = await getJSON("/sites");
    const list = (items) => (items.length ? items.map((x) => `<span class="tag">${x}</span>`).join(" ") : "–");
    $("#sites tbody").innerHTML = sites
      .map(
        (p) => `<tr id="site-${esc(p.id)}"><td>${esc(p.name)}${p.name !== p.id ? `<div class="muted small">${esc(p.id)}</div>` : ""}</td>
        <td class="role"><span class="tag">${esc(p.role ?? "site")}</span></td>
        <td class="status"><span class="badge ${esc(p.status)}">${esc(p.status)}</span></td>
        <td class="beat">${p.last_heartbeat ? new Date(p.last_heartbeat).toLocaleString() : "–"}</td>
        <td class="agent">${esc(p.agent ?? "–")}</td>
        <td class="apps">${list(Object.entries(p.apps).map(([a, digest]) => `${esc(a)} <span class="muted">${esc(digest)}</span>`))}</td>
        <td class="datasets">${list(p.datasets.map(esc))}</td><td>${p.num_examples}</td>
        <td class="epoch">${p.epoch ?? "–"} / ${p.epochs ?? "–"}</td><td class="loss">${fmt(p.loss)}</td><td class="acc">${fmt(p.accuracy)}</td></tr>`,
      )
      .join("");
  }

  function initSites() {
    const refresh = debounced(loadSites);
    refresh();
    listen(null, {
      peer_status: refresh,
      site: refresh,
      heartbeat: (h) => {
        const row = document.getElementById(`site-${h.client_id}`);
        if (!row) return refresh();
        row.querySelector(".status").innerHTML = `<span class="badge ${esc(h.status)}">${esc(h.status)}</span>`;
        row.querySelector(".beat").textContent = new Date().toLocaleString();
        row.querySelector(".epoch").textContent = `${h.epoch ?? "–"} / ${h.epochs ?? "–"}`;
        row.querySelector(".loss").textContent = fmt(h.loss);
        row.querySelector(".acc").textContent = fmt(h.accuracy);
      },
    });
  }

  async function download(name, version) {
    const blob = await (await api(`/models/${encodeURIComponent(name)}/versions/${version}/download`)).blob();
    const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: `${name}-v${version}.safetensors` });
    a.click();
    URL.revokeObjectURL(a.href);
  }

  // A model version's final metrics, whatever the app reports: accuracy and loss first
  function metricList(metrics) {
    const names = Object.keys(metrics).filter((k) => typeof metrics[k] === "number");
    const first = ["accuracy", "loss"].filter((k) => names.includes(k));
    const ordered = [...first, ...names.filter((k) => !first.includes(k)).sort()];
    return ordered.map((k) => `${esc(k)} ${fedhiveCharts.short(metrics[k], 4)}`).join(" · ") || "–";
  }

  async function loadModels() {
    const models = await getJSON("/models");
    const parts = await Promise.all(
      models.map(async (m) => {
        const versions = await getJSON(`/models/${encodeURIComponent(m.name)}/versions`);
        const rows = versions
          .map(
            (v) => `<tr><td>v${v.version}</td><td>${esc(v.model_spec)}</td><td>${metricList(v.metrics)}</td>
            <td>${v.session_id ? `<a href="/ui/sessions/${esc(v.session_id)}">${esc(v.session_id)}</a>` : "–"}</td>
            <td><button class="download" data-name="${esc(m.name)}" data-version="${v.version}">Download</button></td></tr>`,
          )
          .join("");
        return `<section class="card"><h2>${esc(m.name)}</h2><table><thead><tr><th>Version</th><th>Model</th>
          <th>Metrics</th><th>Session</th><th></th></tr></thead><tbody>${rows}</tbody></table></section>`;
      }),
    );
    $("#models").innerHTML = parts.join("") || "<p class='muted'>No models yet: a finished session registers one.</p>";
  }

  function initModels() {
    loadModels().catch((e) => showError(e.message));
    $("#models").addEventListener("click", (e) => {
      const b = e.target.closest("button.download");
      if (b) download(b.dataset.name, b.dataset.version).catch((err) => showError(err.message));
    });
  }

  const init = { signin: initSignin, sessions: initSessions, new: initNew, session: initSession, sites: initSites, models: initModels };
  if (page !== "signin" && !sessionStorage.getItem(TOKEN)) toSignin();
  else init[page]?.();
})();
