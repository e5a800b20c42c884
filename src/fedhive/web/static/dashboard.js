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
      location.href = "/ui/signin";
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
    location.href = "/ui";
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
  async function loadSessions() {
    const rows = await getJSON("/sessions");
    $("#sessions tbody").innerHTML = rows
      .map(
        (s) => `<tr><td><a href="/ui/sessions/${esc(s.id)}">${esc(s.id)}</a></td>
        <td><span class="badge ${esc(s.status)}">${esc(s.status)}</span></td>
        <td>${s.rounds_done} / ${s.rounds_total}</td><td>${esc(s.app === "builtin" ? s.config.model : `app ${s.app}`)}</td>
        <td>${esc(s.config.strategy)}</td><td>${new Date(s.created_at).toLocaleString()}</td></tr>`,
      )
      .join("");
  }

  function initSessions() {
    const refresh = debounced(loadSessions);
    refresh();
    listen(null, { round: refresh, completed: refresh, failed: refresh });
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

  function initNew() {
    const form = $("#new-session");
    loadApps(form).catch((err) => showError(err.message));
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

  // -- one session: a chart per metric, a box plot per client metric (static/charts.js) -------
  async function loadSession() {
    const d = await getJSON(`/ui/data/sessions/${encodeURIComponent(sessionId)}`);
    const s = d.session;
    $("#status").textContent = s.status;
    $("#status").className = `badge ${s.status}`;
    const what = s.app === "builtin" ? `model ${s.config.model}` : `app ${s.app}`;
    $("#progress").textContent = `round ${s.rounds_done} of ${s.rounds_total} · ${what} · strategy ${s.config.strategy}`;
    $("#app").textContent = s.app;
    if (d.rounds.length) fedhiveCharts.lines($("#charts"), d.charts, d.rounds);
    fedhiveCharts.boxPlots($("#boxes"), d.boxes);
    const columns = ["Client", "Rounds", "Last round", "Status", "Examples", ...d.client_metrics];
    $("#clients thead tr").innerHTML = columns.map((c) => `<th>${esc(c)}</th>`).join("");
    $("#clients tbody").innerHTML = d.clients
      .map(
        (c) => `<tr><td>${esc(c.client_id)}</td><td>${c.rounds}</td><td>${c.last_round}</td><td>${esc(c.status)}</td>
        <td>${c.num_examples}</td>${d.client_metrics.map((m) => `<td>${fedhiveCharts.short(c.metrics[m] ?? null, 4)}</td>`).join("")}</tr>`,
      )
      .join("");
    const m = s.final_model;
    $("#final-model").innerHTML = m ? `Final model: <a href="/ui/models">${esc(m.name)} v${m.version}</a>` : "";
  }

  function initSession() {
    const refresh = debounced(loadSession);
    refresh();
    listen(sessionId, { round: refresh, update: refresh, completed: refresh, failed: refresh });
  }

  // -- peers and models ---------------------------------------------------------------------
  async function loadPeers() {
    const peers = await getJSON("/peers");
    $("#peers tbody").innerHTML = peers
      .map(
        (p) => `<tr id="peer-${esc(p.id)}"><td>${esc(p.name)}</td><td class="status"><span class="badge ${esc(p.status)}">${esc(p.status)}</span></td>
        <td class="beat">${p.last_heartbeat ? new Date(p.last_heartbeat).toLocaleTimeString() : "–"}</td>
        <td class="epoch">${p.epoch ?? "–"} / ${p.epochs ?? "–"}</td><td class="loss">${fmt(p.loss)}</td><td class="acc">${fmt(p.accuracy)}</td></tr>`,
      )
      .join("");
  }

  function initPeers() {
    const refresh = debounced(loadPeers);
    refresh();
    listen(null, {
      peer_status: refresh,
      heartbeat: (h) => {
        const row = document.getElementById(`peer-${h.client_id}`);
        if (!row) return refresh();
        row.querySelector(".status").innerHTML = `<span class="badge ${esc(h.status)}">${esc(h.status)}</span>`;
        row.querySelector(".beat").textContent = new Date().toLocaleTimeString();
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

  const init = { signin: initSignin, sessions: initSessions, new: initNew, session: initSession, peers: initPeers, models: initModels };
  if (page !== "signin" && !sessionStorage.getItem(TOKEN)) location.href = "/ui/signin";
  else init[page]?.();
})();
