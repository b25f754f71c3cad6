// Bridge Lite browser client: one dependency-free ES module, served by the gateway at /client.js.
//
//   import { BridgeClient } from "http://gateway:8080/client.js";
//   const client = new BridgeClient("http://gateway:8080", { tokenProvider: async () => token });
//   const sub = client.subscribe("intents", {
//     filter: { status: ["failed", "corrected"] },
//     onEvent: (event) => render(event),        // {type, topic, id, op, key, data, ts}
//                                               // op: insert|update|delete|truncate
//                                               // event.traceparent: the writer's W3C
//                                               // trace context, when it set one
//     onError: (err) => { if (err.code === "history_lost") reload(); },
//   });
//   ...; sub.close(); client.close();
//
// One WebSocket carries every subscription; when the browser cannot open one but the
// gateway answers plain HTTP, each subscription gets an EventSource instead. Either way the
// client reconnects with capped exponential backoff and full jitter, resumes every
// subscription from the last event it delivered and drops anything at or below that id, so
// onEvent sees each event once. `history_lost` (the gateway no longer holds the events to
// resume from) reaches onError as a HistoryLost; the subscription then carries on live.
// An event with op "truncate" (key "", data {}) means the table was emptied: drop every row
// held for the topic. A composite primary key arrives as JSON array text: JSON.parse(key).
//
// Presence (WebSocket): `client.subscribe(topic, { presence: true, onPresence })` keeps
// `sub.presence` (a Map conn -> {sub, conn, info}) and `sub.presenceCounts` ({connections,
// subs, truncated}) as the gateway reports them; onPresence(change, sub) gets each change
// ({joins, leaves, full, connections, subs, truncated}); a `full` one replaces the list (the
// first frame, and after every reconnect). `await client.presence(topic)` reads it over HTTP
// ({topic, present, connections, subs, truncated}) whatever the transport.
//
// A filtered subscriber gets op "leave" (key, no data) when an update takes a row out of
// its filter.
//
// Snapshot then stream: subscribe(topic, { snapshot: true | { limit }, onSnapshot }) first
// hands onSnapshot({rows, keys, first, complete, truncated}) the rows matching the filter
// (first: drop what you hold; complete: every later callback is an event), then onEvent
// every change after them exactly once. `new BridgeView(client, topic, { filter, onChange })`
// keeps them as a Map by key (view.rows) and calls onChange(view, event) after each change.

export class BridgeClientError extends Error {
  constructor(code, message, topic = null) {
    super(topic ? `${topic}: ${code}: ${message}` : `${code}: ${message}`);
    this.name = "BridgeClientError";
    this.code = code;
    this.topic = topic;
  }
}

export class HistoryLost extends BridgeClientError {
  constructor(topic, since, message = "") {
    super("history_lost", message || `history after ${since} is no longer retained`, topic);
    this.name = "HistoryLost";
    this.since = since;
  }
}

/** Upper bound of the delay (ms) before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(attempt, base, cap) {
  return Math.min(cap, base * 2 ** Math.min(attempt, 62));
}

/** Full jitter: uniform in [0, backoffCeiling(attempt)]. */
export function backoffDelay(attempt, base, cap, rand = Math.random) {
  return rand() * backoffCeiling(attempt, base, cap);
}

/** "1764350000000-3" -> [1764350000000, 3]; ids order as integer pairs. */
export function parseEventId(id) {
  const m = /^(\d{1,20})(?:-(\d{1,20}))?$/.exec(String(id));
  if (!m) throw new BridgeClientError("bad_request", `invalid event id ${id}`);
  return [Number(m[1]), Number(m[2] || 0)];
}

function idAfter(a, b) {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
}

class Schedule {
  constructor(policy) {
    this.policy = policy;
    this.attempt = 0;
    this.upSince = null;
  }
  connected() {
    this.upSince = Date.now();
  }
  disconnected() {
    if (this.upSince !== null && Date.now() - this.upSince >= this.policy.healthyAfter) {
      this.attempt = 0;
    }
    this.upSince = null;
  }
  next() {
    return backoffDelay(this.attempt++, this.policy.base, this.policy.cap);
  }
}

const AUTH_STATUSES = new Set([401, 403]);

class Subscription {
  constructor(
    client,
    topic,
    {
      filter = null,
      since = null,
      snapshot = false,
      onEvent,
      onError,
      onLive,
      onSnapshot,
      presence = false,
      onPresence,
    } = {},
  ) {
    this.client = client;
    this.topic = topic;
    this.snapshot = snapshot;
    this._snapshotDone = false;
    this._snapshotFrames = 0;
    this._snapshotTruncated = false;
    this._onSnapshot = onSnapshot || (() => {});
    this.filter = filter;
    this.since = since;
    this.lastId = since;
    this.recovered = null;
    this.live = false;
    this.closed = false;
    this.failed = null;
    this._lastKey = since ? parseEventId(since) : null;
    this._anchor = `${Math.max(0, Date.now() - client.options.clockSkew)}-0`;
    this._requested = false;
    this._sentSince = null;
    this._failedRequests = 0;
    this._onEvent = onEvent || (() => {});
    this._onError = onError || ((err) => console.warn("bridge client:", err));
    this._onLive = onLive || (() => {});
    this.wantsPresence = !!presence;
    /** conn -> {sub, conn, info}; null unless subscribed with presence: true */
    this.presence = presence ? new Map() : null;
    this.presenceCounts = { connections: 0, subs: 0, truncated: false };
    /** true once the whole list arrived on the current connection */
    this.presenceReady = false;
    this._onPresence = onPresence || (() => {});
    this._source = null; // EventSource in SSE mode
    this._sse = null; // its schedule
    this._timer = null;
  }

  /** The `since` of the next subscribe request. */
  resumeFrom() {
    if (this.lastId !== null) return this.lastId;
    if (this.snapshot && !this._snapshotDone) return null; // the snapshot starts afresh
    return this._requested ? this._anchor : null;
  }

  /** The `snapshot` of the next subscribe request (null: resume or plain). */
  _snapshotRequest() {
    if (!this.snapshot || this._snapshotDone || this.lastId !== null) return null;
    this._snapshotFrames = 0;
    this._snapshotTruncated = false;
    return this.snapshot === true ? true : { limit: this.snapshot.limit };
  }

  _snapshotPart(part) {
    try {
      this._onSnapshot(part);
    } catch (err) {
      console.error("bridge client: onSnapshot threw", err);
    }
  }

  _snapshotFrame(msg) {
    const first = this._snapshotFrames === 0;
    this._snapshotFrames += 1;
    this._snapshotTruncated = !!msg.truncated;
    this._snapshotPart({
      rows: msg.rows || [], keys: msg.keys || [], first, complete: false, truncated: false,
    });
  }

  _subscribed(msg) {
    if (msg.position && this.snapshot && !this._snapshotDone) {
      this._snapshotDone = true;
      if (this.lastId === null) {
        this.lastId = msg.position;
        this._lastKey = parseEventId(msg.position);
      }
      this._snapshotPart({
        rows: [],
        keys: [],
        first: this._snapshotFrames === 0,
        complete: true,
        truncated: this._snapshotTruncated,
      });
    }
    this._setLive(!!msg.recovered);
  }

  get active() {
    return !this.closed && this.failed === null;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.live = false;
    this.client._forget(this);
  }

  _deliver(event) {
    let key;
    try {
      key = parseEventId(event.id);
    } catch (err) {
      return;
    }
    if (this._lastKey !== null && !idAfter(key, this._lastKey)) return; // already delivered
    this._lastKey = key;
    this.lastId = event.id;
    try {
      this._onEvent(event);
    } catch (err) {
      console.error("bridge client: onEvent threw", err);
    }
  }

  _setLive(recovered) {
    this._failedRequests = 0;
    this.recovered = recovered;
    this.live = true;
    try {
      this._onLive(recovered);
    } catch (err) {
      console.error("bridge client: onLive threw", err);
    }
  }

  _presence(msg) {
    if (!this.presence) return;
    if (msg.full) this.presence.clear();
    for (const e of msg.leaves || []) this.presence.delete(e.conn);
    for (const e of msg.joins || []) this.presence.set(e.conn, e);
    this.presenceCounts = {
      connections: msg.connections ?? this.presence.size,
      subs: msg.subs ?? new Set([...this.presence.values()].map((e) => e.sub)).size,
      truncated: !!msg.truncated,
    };
    this.presenceReady = true;
    const change = {
      joins: msg.joins || [],
      leaves: msg.leaves || [],
      full: !!msg.full,
      ...this.presenceCounts,
    };
    try {
      this._onPresence(change, this);
    } catch (err) {
      console.error("bridge client: onPresence threw", err);
    }
  }

  _report(err) {
    try {
      this._onError(err);
    } catch (e) {
      console.error("bridge client: onError threw", e);
    }
  }

  _fail(err) {
    if (!this.active) return;
    this.failed = err;
    this.live = false;
    this.client._forget(this, { keepFailed: true });
    this._report(err);
  }
}

export class BridgeClient {
  /**
   * @param {string} [url] gateway base URL (http(s) or ws(s)); default: where this module came from
   * @param {object} [opts] {token, tokenProvider, transport: "auto"|"websocket"|"sse",
   *   backoff: {base, cap, healthyAfter} (ms), pingInterval (ms), maxAuthFailures, clockSkew (ms)}
   */
  constructor(url, opts = {}) {
    const base = new URL(url || new URL(import.meta.url).origin);
    const httpScheme = base.protocol === "wss:" || base.protocol === "https:" ? "https:" : "http:";
    let path = base.pathname.replace(/\/+$/, "");
    if (path.endsWith("/ws")) path = path.slice(0, -3);
    this.httpBase = `${httpScheme}//${base.host}${path}`;
    this.wsUrl = `${httpScheme === "https:" ? "wss:" : "ws:"}//${base.host}${path}/ws`;
    this.options = {
      transport: opts.transport || "auto",
      backoff: { base: 500, cap: 10000, healthyAfter: 10000, ...(opts.backoff || {}) },
      pingInterval: opts.pingInterval ?? 20000,
      maxAuthFailures: opts.maxAuthFailures ?? 3,
      maxSubscribeRetries: opts.maxSubscribeRetries ?? 5,
      clockSkew: opts.clockSkew ?? 1000,
    };
    this._token = opts.token ?? null;
    this._tokenProvider = opts.tokenProvider || null;
    this._subs = new Map();
    this._ws = null;
    this._onWire = new Map();
    this._schedule = new Schedule(this.options.backoff);
    this._authFailures = 0;
    this._wsRefused = 0;
    this._timer = null;
    this._pinger = null;
    this._closed = false;
    this.fatal = null;
    /** "websocket" | "sse" | null */
    this.transport = null;
    this.connections = 0;
    this.tokenRequests = 0;
    if (this.options.transport === "sse") this.transport = "sse";
  }

  /** Subscribe; callbacks: onEvent(event), onError(err), onLive(recovered),
   *  onPresence(change, sub) with `presence: true`. */
  subscribe(topic, opts = {}) {
    if (this._closed) throw new BridgeClientError("closed", "client is closed");
    if (this.fatal) throw this.fatal;
    if (this._subs.has(topic)) {
      throw new BridgeClientError("bad_request", "already subscribed; close that one first", topic);
    }
    if (opts.snapshot && opts.since) {
      throw new BridgeClientError("bad_request", "snapshot and since exclude each other", topic);
    }
    const sub = new Subscription(this, topic, opts);
    this._subs.set(topic, sub);
    if (this.transport === "sse") this._openSse(sub);
    else this._sync();
    return sub;
  }

  get subscriptions() {
    return [...this._subs.values()];
  }

  /** Who is subscribed to `topic` on every gateway now: {topic, present, connections, subs,
   *  truncated}; `{count: true}`: only {topic, connections, subs}. Throws BridgeClientError. */
  async presence(topic, { count = false } = {}) {
    const u = new URL(`${this.httpBase}/presence/${encodeURIComponent(topic)}`);
    if (count) u.searchParams.set("count", "1");
    const token = await this._getToken();
    // the token goes in the query, as for EventSource: an Authorization header would make a
    // cross-origin request need a preflight
    if (token) u.searchParams.set("token", token);
    let r;
    try {
      r = await fetch(u, { headers: { Accept: "application/json" } });
    } catch (err) {
      throw new BridgeClientError("unavailable", String(err), topic);
    }
    let body = null;
    try {
      body = await r.json();
    } catch (err) {
      body = null;
    }
    if (!r.ok) {
      const code = (body && body.code) || `http_${r.status}`;
      throw new BridgeClientError(code, (body && body.message) || r.statusText, topic);
    }
    return body;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearInterval(this._pinger);
    for (const sub of this._subs.values()) {
      sub.closed = true;
      sub.live = false;
      this._stopSse(sub);
    }
    this._subs.clear();
    if (this._ws) this._ws.close(1000, "client closed");
    this._ws = null;
  }

  // -- shared ------------------------------------------------------------------------

  async _getToken() {
    if (!this._tokenProvider) return this._token;
    this.tokenRequests += 1;
    return await this._tokenProvider();
  }

  _forget(sub) {
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
    this._stopSse(sub);
    this._sync();
  }

  _failAll(err) {
    this.fatal = err;
    for (const sub of [...this._subs.values()]) sub._fail(err);
  }

  /** What a plain HTTP request to the SSE endpoint answers: a status, or 0 when unreachable. */
  async _probe(topic, token) {
    const u = new URL(`${this.httpBase}/events/${encodeURIComponent(topic)}`);
    if (token) u.searchParams.set("token", token);
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 10000);
    try {
      const r = await fetch(u, { headers: { Accept: "text/event-stream" }, signal: ctl.signal });
      return r.status;
    } catch (err) {
      return 0;
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  }

  /** A 401/403: true when final (no provider, or too many in a row). */
  _refused(status) {
    this._authFailures += 1;
    if (!this._tokenProvider || this._authFailures >= this.options.maxAuthFailures) {
      this._failAll(new BridgeClientError("unauthorized", `gateway refused the token (HTTP ${status})`));
      return true;
    }
    return false;
  }

  // -- WebSocket ---------------------------------------------------------------------

  _wanted() {
    const now = Date.now();
    return [...this._subs.values()].filter((s) => s.active && (s._notBefore || 0) <= now);
  }

  /** Make the connection's subscriptions match the wanted ones (or connect). */
  _sync() {
    if (this._closed || this.transport === "sse") return;
    const ws = this._ws;
    if (!ws) {
      if (this._timer === null && this._wanted().length) this._connectWs();
      return;
    }
    if (ws.readyState !== WebSocket.OPEN) return;
    const wanted = new Map(this._wanted().map((s) => [s.topic, s]));
    for (const [topic, sub] of [...this._onWire]) {
      if (wanted.get(topic) !== sub) {
        this._onWire.delete(topic);
        ws.send(JSON.stringify({ type: "unsubscribe", topic }));
      }
    }
    for (const [topic, sub] of wanted) {
      if (this._onWire.has(topic)) continue;
      const msg = { type: "subscribe", topic };
      if (sub.filter) msg.filter = sub.filter;
      const since = sub.resumeFrom();
      sub._sentSince = since;
      sub._requested = true;
      if (since !== null) msg.since = since;
      else {
        const snapshot = sub._snapshotRequest();
        if (snapshot !== null) msg.snapshot = snapshot;
      }
      if (sub.wantsPresence) msg.presence = true;
      this._onWire.set(topic, sub);
      ws.send(JSON.stringify(msg));
    }
  }

  _later(fn, delay) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      fn();
    }, delay);
  }

  async _connectWs() {
    this._timer = -1; // connecting
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      console.warn("bridge client: tokenProvider failed", err);
      this._later(() => this._connectWs(), this._schedule.next());
      return;
    }
    if (this._closed) return;
    this._timer = null;
    const u = new URL(this.wsUrl);
    if (token) u.searchParams.set("token", token);
    const ws = new WebSocket(u);
    this._ws = ws;
    let opened = false;
    let lastHeard = Date.now();
    ws.onopen = () => {
      opened = true;
      this._authFailures = 0;
      this._wsRefused = 0;
      this.transport = "websocket";
      this.connections += 1;
      this._schedule.connected();
      this._onWire = new Map();
      clearInterval(this._pinger);
      const every = this.options.pingInterval;
      this._pinger = setInterval(() => {
        if (Date.now() - lastHeard > 2 * every) ws.close(4000, "no answer to ping");
        else if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}');
      }, every);
      this._sync();
    };
    ws.onmessage = (e) => {
      lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      this._handle(msg, ws);
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      clearInterval(this._pinger);
      for (const sub of this._subs.values()) {
        sub.live = false;
        sub.presenceReady = false;
      }
      if (this._closed) return;
      if (opened) {
        this._schedule.disconnected();
        this._later(() => this._sync(), this._schedule.next());
      } else {
        this._wsFailed(token);
      }
    };
  }

  /** The browser does not say why an upgrade failed: ask the SSE endpoint over HTTP. */
  async _wsFailed(token) {
    this._timer = -1;
    const first = this._wanted()[0];
    const status = first ? await this._probe(first.topic, token) : 0;
    this._timer = null;
    if (this._closed) return;
    if (AUTH_STATUSES.has(status)) {
      if (this._refused(status)) return;
    } else if (status >= 200 && status < 300 && this.options.transport === "auto") {
      // HTTP works, WebSocket does not (twice, so a gateway restart is not mistaken for it)
      if (++this._wsRefused >= 2) return this._fallBack();
    } else {
      this._wsRefused = 0;
    }
    this._later(() => this._sync(), this._schedule.next());
  }

  _fallBack() {
    console.warn("bridge client: WebSocket unavailable, using EventSource");
    this.transport = "sse";
    for (const sub of this._subs.values()) this._openSse(sub);
  }

  _handle(msg, ws) {
    const sub = msg.topic !== undefined ? this._onWire.get(msg.topic) : undefined;
    if (msg.type === "event") {
      if (sub && sub.active) sub._deliver(msg);
    } else if (msg.type === "snapshot") {
      if (sub && sub.active) sub._snapshotFrame(msg);
    } else if (msg.type === "subscribed") {
      if (sub) sub._subscribed(msg);
    } else if (msg.type === "presence") {
      if (sub && sub.active) sub._presence(msg);
    } else if (msg.type === "error") {
      if (!sub) {
        console.warn("bridge client: gateway error", msg.code, msg.message);
      } else if (msg.code === "history_lost") {
        sub._report(new HistoryLost(sub.topic, sub._sentSince, msg.message));
      } else {
        this._onWire.delete(sub.topic);
        this._rejected(sub, msg, (delay) => {
          sub._notBefore = Date.now() + delay;
          setTimeout(() => this._sync(), delay);
        });
      }
    }
  }

  /** forbidden/unknown_topic/...: final; bad_request (maybe Redis trouble): retry a few times. */
  _rejected(sub, msg, retry) {
    const err = new BridgeClientError(msg.code, msg.message || "", sub.topic);
    sub._failedRequests += 1;
    if (msg.code !== "bad_request" || sub._failedRequests > this.options.maxSubscribeRetries) {
      sub._fail(err);
      return;
    }
    const b = this.options.backoff;
    retry(backoffDelay(sub._failedRequests - 1, b.base, b.cap));
  }

  // -- EventSource -------------------------------------------------------------------

  _stopSse(sub) {
    clearTimeout(sub._timer);
    if (sub._source) sub._source.close();
    sub._source = null;
  }

  async _openSse(sub) {
    if (!sub.active || this._closed) return;
    sub._sse = sub._sse || new Schedule(this.options.backoff);
    const again = () => {
      this._stopSse(sub);
      sub.live = false;
      if (sub.active && !this._closed) {
        sub._timer = setTimeout(() => this._openSse(sub), sub._sse.next());
      }
    };
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      return again();
    }
    if (!sub.active || this._closed) return;
    const u = new URL(`${this.httpBase}/events/${encodeURIComponent(sub.topic)}`);
    for (const [field, value] of Object.entries(sub.filter || {})) {
      for (const v of Array.isArray(value) ? value : [value]) {
        u.searchParams.append(field, typeof v === "string" ? v : JSON.stringify(v));
      }
    }
    if (token) u.searchParams.set("token", token);
    const since = sub.resumeFrom();
    sub._sentSince = since;
    sub._requested = true;
    if (since !== null) u.searchParams.set("last_event_id", since);
    else if (sub._snapshotRequest() !== null) u.searchParams.set("snapshot", "1");
    const es = new EventSource(u);
    sub._source = es;
    let opened = false;
    const onData = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (msg.type === "event" && msg.topic === sub.topic) sub._deliver(msg);
      else if (msg.type === "snapshot" && msg.topic === sub.topic) sub._snapshotFrame(msg);
      else if (msg.type === "subscribed") sub._subscribed(msg);
    };
    es.addEventListener(sub.topic, onData);
    if (sub.topic !== "message") es.addEventListener("message", onData);
    es.addEventListener("subscribed", onData);
    es.addEventListener("snapshot", onData);
    es.onopen = () => {
      opened = true;
      this._authFailures = 0;
      this.connections += 1;
      sub._sse.connected();
    };
    es.addEventListener("error", async (e) => {
      if (sub._source !== es) return;
      if (e.data) {
        // an `event: error` frame from the gateway
        let msg;
        try {
          msg = JSON.parse(e.data);
        } catch (err) {
          return;
        }
        if (msg.code === "history_lost") {
          sub._report(new HistoryLost(sub.topic, sub._sentSince, msg.message));
        } else {
          this._rejected(sub, msg, () => again());
        }
        return;
      }
      // the connection failed or ended: we reconnect ourselves (fresh token, resume id)
      es.close();
      if (opened) {
        sub._sse.disconnected();
        return again();
      }
      const status = await this._probe(sub.topic, token);
      if (AUTH_STATUSES.has(status) && this._refused(status)) return;
      again();
    });
  }
}

export default BridgeClient;

/** A topic's rows by key, kept true by a snapshot and the events after it. */
export class BridgeView {
  constructor(client, topic, { filter = null, limit = null, onChange, onError } = {}) {
    this.rows = new Map();
    this.complete = false;
    this.truncated = false;
    this._onChange = onChange || (() => {});
    this.subscription = client.subscribe(topic, {
      filter,
      snapshot: limit ? { limit } : true,
      onSnapshot: (part) => this._rows(part),
      onEvent: (event) => this._event(event),
      onError,
    });
  }

  _rows(part) {
    if (part.first) {
      this.rows.clear();
      this.complete = false;
    }
    part.rows.forEach((row, i) => this.rows.set(part.keys[i], row));
    if (part.complete) {
      this.complete = true;
      this.truncated = !!part.truncated;
      this._changed(null);
    }
  }

  _event(event) {
    if (event.op === "insert" || event.op === "update") {
      if (event.data !== undefined) this.rows.set(event.key, event.data);
      else this.rows.delete(event.key); // too large to travel: values unknown
    } else if (event.op === "delete" || event.op === "leave") {
      this.rows.delete(event.key);
    } else if (event.op === "truncate") {
      this.rows.clear();
    }
    if (this.complete) this._changed(event);
  }

  _changed(event) {
    try {
      this._onChange(this, event);
    } catch (err) {
      console.error("bridge client: onChange threw", err);
    }
  }

  close() {
    this.subscription.close();
  }
}
