// Bridge Lite dashboard: polls the metrics API every few seconds and, when a gateway URL is
// configured, also imports the gateway's browser client (`<gateway>/client.js`) and listens
// to `audit_logs` and `alerts` events through it to refresh as soon as something happens.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("dashboard-config").textContent || "{}");
  const POLL_MS = Math.max(500, Number(config.pollMs) || 3000);
  const SEVERITIES = ["debug", "info", "warning", "error", "critical"];
  const RANGES = {
    "1h": { bucket: "1m", ms: 3600e3 },
    "6h": { bucket: "5m", ms: 6 * 3600e3 },
    "24h": { bucket: "15m", ms: 24 * 3600e3 },
    "7d": { bucket: "1h", ms: 7 * 24 * 3600e3 },
  };
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    range: "1h",
    timeline: null,
    failures: 0,
    inflight: false,
    lastOk: 0,
    live: null, // the BridgeClient, once loaded
    loggedOut: false, // the session ended: stop reacting to 401s
    timer: null,
    refreshSoon: null,
  };

  // -- small DOM helpers (text only: nothing from the API is parsed as HTML) ---------------
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function replaceChildren(node, children) {
    node.replaceChildren(...children);
  }

  // -- formatting ----------------------------------------------------------------------------
  const nf = new Intl.NumberFormat();
  function fmtInt(n) {
    if (n === null || n === undefined) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(n >= 1e5 ? 0 : 1) + "k";
    return nf.format(n);
  }
  function fmtPct(x) {
    if (x === null || x === undefined) return "–";
    const p = x * 100;
    return (p === 0 ? "0" : p < 0.1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
  }
  function ago(iso) {
    if (!iso) return "–";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }
  function hhmm(d, withDay) {
    const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    if (!withDay) return t;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + t;
  }

  // -- tiles ----------------------------------------------------------------------------------
  function tile(key, value, sub, level) {
    $("t-" + key).textContent = value;
    $("t-" + key + "-sub").textContent = sub || "";
    const t = document.querySelector('.tile[data-key="' + key + '"]');
    t.classList.remove("ok", "warn", "bad");
    if (level) t.classList.add(level);
  }
  function level(value, warn, bad) {
    if (value === null || value === undefined) return "";
    if (value >= bad) return "bad";
    if (value >= warn) return "warn";
    return "ok";
  }

  function renderOverview(ov) {
    const a5 = ov.audit && ov.audit["5m"];
    const a1h = ov.audit && ov.audit["1h"];
    if (a5) {
      tile("events", fmtInt(a5.events), fmtInt(a1h.events) + " / 1h · " +
        fmtInt(ov.audit["24h"].events) + " / 24h", "ok");
      tile("errorrate", fmtPct(a5.error_rate), fmtInt(a5.errors) + " error/critical",
        level(a5.error_rate, 0.01, 0.05));
    } else {
      tile("events", "–", "target database unavailable", "bad");
      tile("errorrate", "–", "", "");
    }
    if (ov.intents) {
      tile("intents", fmtInt(ov.intents.total), fmtInt(ov.intents.failed_5m) +
        " failed in 5 min", ov.intents.failed_5m > 0 ? "warn" : "ok");
    } else {
      tile("intents", "–", "source database unavailable", "bad");
    }
    if (ov.gateway) {
      const g = ov.gateway;
      // per topic (from the gateways' presence leases, the same source as the total)
      const topics = Object.entries(g.topics || {})
        .sort((x, y) => y[1].subscriptions - x[1].subscriptions)
        .slice(0, 3)
        .map(([t, v]) => t + " " + fmtInt(v.subscriptions));
      tile("connections", fmtInt(g.connections), g.instances + " gateway" +
        (g.instances === 1 ? "" : "s") + " up" + (topics.length ? " · " + topics.join(" · ") : ""),
        g.instances > 0 ? "ok" : "warn");
    }
    if (ov.notifier) {
      const n = ov.notifier;
      tile("notifier", fmtSeconds(n.lag_seconds), n.outbox_backlog === null ? "no notifier up" :
        fmtInt(n.outbox_backlog) + " in outbox", n.lag_seconds === null ? "warn" :
        level(n.lag_seconds, 5, 30));
    }
    if (ov.etl) {
      tile("etl", fmtSeconds(ov.etl.lag_seconds), ov.etl.lag_seconds === null ?
        "no ETL worker up" : "behind the source",
        ov.etl.lag_seconds === null ? "warn" : level(ov.etl.lag_seconds, 10, 60));
    }
    if (ov.corrections) {
      tile("corrections", fmtInt(ov.corrections.count_1h), "intent.corrected", "ok");
    }
    if (ov.alerts) {
      const c = ov.alerts.count;
      tile("alerts", String(c), c ? ov.alerts.firing[0].rule : "all quiet", c ? "bad" : "ok");
      renderAlerts(ov.alerts.firing);
    }
    renderStatuses(ov.intents);
    state.lag = ov.lag;
    renderLag();
    const errs = Object.entries(ov.errors || {});
    showBanner(errs.length ? "Partly unavailable: " + errs.map((e) => e[1]).join("; ") : "");
  }

  // per topic and hop: p50 / p99 seconds over the last minute (overview `lag`), and the
  // worst p99 over the last hour (`/api/v1/dashboard/lag`, refreshed every 30 s)
  function renderLag() {
    const lag = state.lag || {};
    const hour = state.lagHour || {};
    const hops = ["commit", "delivery", "store"];
    const topics = [...new Set(hops.flatMap((h) => Object.keys(lag[h] || {}))
      .concat(Object.keys(hour)))].sort();
    $("lag-count").textContent = topics.length ? topics.length + " topics" : "";
    if (!topics.length) {
      const tr = el("tr");
      const td = el("td", "empty", "No events in the last hour");
      td.colSpan = 4;
      tr.append(td);
      replaceChildren($("lag"), [tr]);
      return;
    }
    const limits = { commit: [1, 5], delivery: [0.5, 2], store: [10, 30] };
    replaceChildren($("lag"), topics.slice(0, 20).map((t) => {
      const tr = el("tr");
      tr.append(el("td", "name", t));
      for (const h of hops) {
        const q = (lag[h] || {})[t];
        const worst = ((hour[t] || {})[h] || {}).p99_max;
        const cell = el("td", q ? level(q.p99, limits[h][0], limits[h][1]) : "",
          q ? fmtSeconds(q.p50) + " / " + fmtSeconds(q.p99) : "–");
        if (typeof worst === "number") {
          const w = el("span", "hour " + level(worst, limits[h][0], limits[h][1]),
            " · 1 h ≤ " + fmtSeconds(worst));
          w.title = "worst p99 over the last hour";
          cell.append(w);
        }
        tr.append(cell);
      }
      return tr;
    }));
  }

  function renderAlerts(firing) {
    $("alerts-count").textContent = firing.length ? firing.length + " firing" : "";
    if (!firing.length) {
      replaceChildren($("alerts"), [el("li", "empty", "No alerts firing")]);
      return;
    }
    replaceChildren($("alerts"), firing.slice(0, 20).map((a) => {
      const li = el("li");
      li.append(el("span", "sev sev-bg-" + sevClass(a.severity), a.severity));
      const main = el("div", "main");
      main.append(el("div", "title", a.rule));
      const val = a.value === null ? "" : "value " + round(a.value) +
        (a.threshold === null ? "" : " / threshold " + round(a.threshold));
      main.append(el("div", "detail", a.summary || val));
      li.append(main, el("span", "when", a.started_at ? "since " + ago(a.started_at) : ""));
      return li;
    }));
  }
  function round(x) {
    return Math.abs(x) >= 100 ? Math.round(x) : Math.round(x * 1000) / 1000;
  }
  function sevClass(s) {
    return SEVERITIES.includes(s) ? s : "warning";
  }

  function renderStatuses(intents) {
    if (!intents) return;
    const entries = Object.entries(intents.by_status);
    $("intents-count").textContent = fmtInt(intents.total) + " total";
    if (!entries.length) {
      replaceChildren($("statuses"), [el("li", "empty", "No intents")]);
      return;
    }
    const max = Math.max(...entries.map((e) => e[1]), 1);
    replaceChildren($("statuses"), entries.slice(0, 12).map(([name, n]) => {
      const li = el("li");
      const track = el("div", "track");
      const fill = el("div", "fill " + name.replace(/[^a-z0-9_-]/gi, ""));
      fill.style.width = Math.max(1, (100 * n) / max) + "%";
      track.append(fill);
      li.append(el("span", "name", name), track, el("span", "num", fmtInt(n)));
      return li;
    }));
  }

  // -- services ---------------------------------------------------------------------------------
  function facts(s) {
    const st = s.status || {};
    const out = [];
    if (typeof st.connections === "number") out.push(fmtInt(st.connections) + " conns");
    if (typeof st.lag_seconds === "number") out.push("lag " + fmtSeconds(st.lag_seconds));
    if (typeof st.outbox_backlog === "number") out.push("backlog " + fmtInt(st.outbox_backlog));
    if (st.leader === true || st.snapshot_leader === true) out.push("leader");
    if (typeof st.port === "number") out.push(":" + st.port);
    return out.join(" · ");
  }
  function renderServices(body) {
    const list = body.services || [];
    $("svc-count").textContent = body.up + " up" + (body.down ? " · " + body.down + " down" : "");
    if (!list.length) {
      const td = el("td", "empty", "No heartbeats yet");
      td.colSpan = 5;
      const tr = el("tr");
      tr.append(td);
      replaceChildren($("services"), [tr]);
      return;
    }
    const sorted = list.slice().sort((x, y) => Number(x.up) - Number(y.up) ||
      x.service.localeCompare(y.service) || x.instance.localeCompare(y.instance));
    replaceChildren($("services"), sorted.slice(0, 50).map((s) => {
      const tr = el("tr", s.up ? "up" : "down");
      const dot = el("td");
      dot.append(el("span", "dot " + (s.up ? "up" : "down")));
      dot.title = s.up ? "up" : "down: missed 3 heartbeats";
      const inst = el("td", "mono", s.instance);
      inst.title = s.instance;
      tr.append(dot, el("td", "", s.service), inst, el("td", "", ago(s.last_heartbeat)),
        el("td", "mono", facts(s)));
      return tr;
    }));
  }

  // -- corrections --------------------------------------------------------------------------------
  function renderCorrections(body) {
    $("corr-count").textContent = fmtInt(body.total) + " in 24 h";
    drawSpark($("corr-spark"), body.per_hour.map((p) => p.count));
    if (!body.latest.length) {
      replaceChildren($("corrections"), [el("li", "empty", "No corrections in the last 24 h")]);
      return;
    }
    replaceChildren($("corrections"), body.latest.map((c) => {
      const li = el("li");
      li.append(el("span", "sev sev-bg-" + sevClass(c.severity), c.severity));
      const main = el("div", "main");
      main.append(el("div", "title", c.intent_id ? "intent " + c.intent_id.slice(0, 8) : "intent –"));
      let detail = "by " + c.actor;
      const d = c.details || {};
      if (d.reason) detail += " · " + String(d.reason);
      else if (d.from !== undefined && d.to !== undefined) detail += " · " + d.from + " → " + d.to;
      main.append(el("div", "detail", detail));
      const when = el("span", "when", ago(c.created_at));
      when.title = c.created_at;
      li.append(main, when);
      return li;
    }));
  }
  function drawSpark(node, values) {
    const w = 480;
    const h = 40;
    const max = Math.max(...values, 1);
    const s = svg("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" });
    const bw = w / Math.max(values.length, 1);
    values.forEach((v, i) => {
      const bh = v ? Math.max(2, (h - 2) * (v / max)) : 0;
      if (bh) s.append(svg("rect", { x: i * bw + 1, y: h - bh, width: Math.max(1, bw - 2), height: bh, rx: 1 }));
    });
    node.replaceChildren(s);
  }

  // -- chart ------------------------------------------------------------------------------------
  function niceMax(v) {
    if (v <= 5) return 5;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function drawChart() {
    const body = state.timeline;
    const node = $("chart");
    if (!body) return;
    const width = Math.max(320, node.clientWidth || 800);
    const height = Math.max(160, node.clientHeight || 250);
    const pad = { l: 46, r: 10, t: 8, b: 24 };
    const iw = width - pad.l - pad.r;
    const ih = height - pad.t - pad.b;
    const pts = body.points;
    const s = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img" });
    const max = niceMax(Math.max(0, ...pts.map((p) => p.total)));
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + ih - (ih * i) / 4;
      s.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: y, y2: y, class: "grid-line" }));
      const lab = svg("text", { x: pad.l - 8, y: y + 4, "text-anchor": "end", class: "axis-label" });
      lab.textContent = fmtInt((max * i) / 4);
      s.append(lab);
    }
    const n = Math.max(pts.length, 1);
    const slot = iw / n;
    const bw = Math.max(1, slot * 0.78);
    const multiDay = RANGES[state.range].ms > 24 * 3600e3;
    const labelEvery = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(iw / 70))));
    pts.forEach((p, i) => {
      const x = pad.l + i * slot + (slot - bw) / 2;
      let y = pad.t + ih;
      const g = svg("g", { class: "bar" });
      const title = svg("title", {});
      const parts = SEVERITIES.filter((sv) => p[sv]).map((sv) => sv + " " + nf.format(p[sv]));
      title.textContent = hhmm(new Date(p.t), multiDay) + " — " + nf.format(p.total) +
        " events" + (parts.length ? "\n" + parts.join("\n") : "");
      g.append(title);
      for (const sv of SEVERITIES) {
        const v = p[sv] || 0;
        if (!v) continue;
        const h = (ih * v) / max;
        y -= h;
        g.append(svg("rect", { x: x, y: y, width: bw, height: Math.max(h, 0.5), class: "sev-" + sv }));
      }
      if (!p.total) {
        g.append(svg("rect", { x: x, y: pad.t, width: bw, height: ih, fill: "transparent" }));
      }
      s.append(g);
      if (i % labelEvery === 0) {
        const lab = svg("text", { x: x + bw / 2, y: height - 6, "text-anchor": "middle", class: "axis-label" });
        lab.textContent = hhmm(new Date(p.t), multiDay && i === 0);
        s.append(lab);
      }
    });
    if (!body.totals.total) {
      const t = svg("text", { x: pad.l + iw / 2, y: pad.t + ih / 2, "text-anchor": "middle", class: "nodata" });
      t.textContent = "No audit events in this range";
      s.append(t);
    }
    node.replaceChildren(s);
    replaceChildren($("legend"), SEVERITIES.map((sv) => {
      const k = el("span", "key");
      k.append(el("span", "sw sw-" + sv), el("span", "", sv + " "), el("b", "", fmtInt(body.totals[sv] || 0)));
      return k;
    }));
  }

  // -- data loading -------------------------------------------------------------------------------
  async function getJSON(path) {
    const r = await fetch(path, {
      cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (r.status === 401 && !state.loggedOut) {
      // the session ended (expired, or logged out elsewhere): the page then says how to log in
      state.loggedOut = true;
      window.location.reload();
    }
    const body = await r.json();
    if (!r.ok) throw new Error((body && body.message) || "HTTP " + r.status);
    return body;
  }
  function timelineUrl() {
    const r = RANGES[state.range];
    const until = new Date();
    const since = new Date(until.getTime() - r.ms);
    return "/api/v1/dashboard/timeline?bucket=" + r.bucket +
      "&since=" + encodeURIComponent(since.toISOString()) +
      "&until=" + encodeURIComponent(until.toISOString());
  }

  async function refresh() {
    if (state.inflight) return;
    state.inflight = true;
    try {
      const [ov, tl, corr, svc] = await Promise.allSettled([
        getJSON("/api/v1/dashboard/overview"),
        getJSON(timelineUrl()),
        getJSON("/api/v1/dashboard/corrections?limit=8"),
        getJSON("/api/v1/services"),
      ]);
      if (ov.status === "fulfilled") renderOverview(ov.value);
      if (tl.status === "fulfilled") { state.timeline = tl.value; drawChart(); }
      if (corr.status === "fulfilled") renderCorrections(corr.value);
      if (svc.status === "fulfilled") renderServices(svc.value);
      const failed = [ov, tl, corr, svc].filter((x) => x.status === "rejected");
      if (failed.length === 4) throw failed[0].reason;
      state.failures = 0;
      state.lastOk = Date.now();
      document.body.dataset.loaded = "1";
      $("updated").textContent = "updated " + new Date().toLocaleTimeString([], { hour12: false });
      if (failed.length) showBanner("Some panels could not refresh: " + failed[0].reason.message);
    } catch (err) {
      state.failures += 1;
      showBanner("Metrics API unreachable — retrying (" + (err && err.message ? err.message : err) + ")");
    } finally {
      state.inflight = false;
      setPill();
      schedule();
    }
  }
  function schedule(delay) {
    clearTimeout(state.timer);
    const backoff = state.failures ? Math.min(30000, POLL_MS * Math.pow(2, state.failures - 1)) : POLL_MS;
    state.timer = setTimeout(refresh, delay === undefined ? backoff : delay);
  }
  function refreshSoon() {
    // a burst of live events triggers one refresh, not one per event
    if (state.refreshSoon) return;
    state.refreshSoon = setTimeout(() => { state.refreshSoon = null; refresh(); }, 400);
  }
  function showBanner(text) {
    const b = $("banner");
    b.textContent = text;
    b.hidden = !text;
  }
  function setPill() {
    const p = $("conn");
    if (state.failures) { p.className = "pill pill-down"; p.textContent = "API unreachable"; }
    else if (liveNow()) { p.className = "pill pill-live"; p.textContent = "live · gateway"; }
    else { p.className = "pill pill-poll"; p.textContent = "live · polling " + (POLL_MS / 1000) + "s"; }
  }

  // -- live events over the gateway (optional) -----------------------------------------------------
  // The gateway's own browser client (`<gateway>/client.js`) does the WebSocket work: one
  // connection for both topics, EventSource fallback, reconnect with backoff, resume from
  // the last id. Polling carries on regardless; live events only make it refresh sooner.
  const LIVE_TOPICS = ["audit_logs", "alerts"];
  const IMPORT_RETRY_MS = [5000, 15000, 60000];

  function showLiveEvent(msg) {
    const feed = $("feed");
    const d = msg.data || {};
    const isAlert = msg.topic === "alerts";
    const sev = isAlert && d.state === "resolved" ? "info" : sevClass(d.severity || "info");
    const li = el("li");
    li.append(el("span", "sev sev-bg-" + sev, isAlert ? "alert" : (d.severity || msg.op)));
    const main = el("div", "main");
    main.append(el("div", "title", isAlert ? (d.rule || "alert") + " " + (d.state || "") :
      (d.action || msg.topic + " " + msg.op)));
    main.append(el("div", "detail", isAlert ? (d.summary || "") : "by " + (d.actor || "?")));
    li.append(main, el("span", "when", new Date().toLocaleTimeString([], { hour12: false })));
    feed.prepend(li);
    while (feed.children.length > 8) feed.lastChild.remove();
    refreshSoon();
  }

  function onLive() {
    $("feed-head").hidden = false;
    $("feed").hidden = false;
    setPill();
  }

  function onLiveError(topic, err) {
    // history_lost: the next poll reloads the figures anyway; anything else (unauthorized,
    // forbidden) ends this topic's live feed and leaves the page polling
    if (err && err.code === "history_lost") refreshSoon();
    console.info("dashboard: live " + topic + ": " + (err && err.message ? err.message : err));
    setPill();
  }

  // The gateway token comes from this API (`/api/v1/gateway-token`, with the session
  // cookie): short-lived, for the two live topics only. The client asks for a token before
  // every connection; a cached one is reused while it has a good margin left, so each
  // (re)connection starts with a token that outlives it by that margin, and when the
  // gateway closes the socket at the token's expiry the client reconnects (resuming from
  // its last event) with a fresh one.
  let gwToken = null; // {token, until (ms, local clock)}
  async function gatewayToken() {
    const now = Date.now();
    if (gwToken && gwToken.until - now > gwToken.margin) return gwToken.token;
    const body = await getJSON("/api/v1/gateway-token");
    const life = Math.max(1, Number(body.expires_in) || 0) * 1000;
    gwToken = { token: body.token, until: now + life, margin: Math.min(60000, life / 4) };
    return body.token;
  }

  async function connectGateway(attempt) {
    if (!config.gatewayUrl) return;
    const base = String(config.gatewayUrl).replace(/\/+$/, "");
    let mod;
    try {
      // a failed import is not retried by the browser under the same URL
      mod = await import(base + "/client.js" + (attempt ? "?attempt=" + attempt : ""));
    } catch (err) {
      const delay = IMPORT_RETRY_MS[Math.min(attempt, IMPORT_RETRY_MS.length - 1)];
      console.info("dashboard: gateway client not loaded (" + (err && err.message) +
        "); polling only, trying again in " + delay / 1000 + " s");
      setTimeout(() => connectGateway(attempt + 1), delay);
      return;
    }
    const opts = config.gatewayTokens ? { tokenProvider: gatewayToken } : {};
    const client = new mod.BridgeClient(base, opts);
    state.live = client;
    for (const topic of LIVE_TOPICS) {
      client.subscribe(topic, {
        onEvent: showLiveEvent,
        onLive: onLive,
        onError: (err) => onLiveError(topic, err),
      });
    }
  }
  function liveNow() {
    return !!state.live && state.live.subscriptions.some((s) => s.live);
  }

  // -- wiring ----------------------------------------------------------------------------------------
  document.getElementById("range").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-range]");
    if (!b) return;
    state.range = b.dataset.range;
    for (const x of document.querySelectorAll("#range button")) x.classList.toggle("on", x === b);
    schedule(0);
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawChart, 150);
  });
  const logout = document.getElementById("logout");
  if (config.auth) {
    logout.hidden = false;
    logout.addEventListener("click", async () => {
      state.loggedOut = true;
      if (state.live) state.live.close();
      await fetch("/logout", { method: "POST", credentials: "same-origin" });
      window.location.assign("/");
    });
  }
  setPill();
  async function refreshLagHour() {
    try {
      state.lagHour = (await getJSON("/api/v1/dashboard/lag?window=1h")).topics;
      renderLag();
    } catch (err) {
      // the last-minute figures still show; the next round tries again
    }
  }

  refresh();
  refreshLagHour();
  setInterval(refreshLagHour, 30000);
  connectGateway(0);
})();
