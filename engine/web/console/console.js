// The operator's web console of a tim-rs node, served on its admin listener.
//
// It signs in with POST /v1/login and calls the admin API with the bearer token. The page is
// served under `default-src 'self'`: everything is built with createElement and textContent
// (never HTML from API data), and the charts are SVG drawn here.

const METRICS_EVERY_MS = 2000;
const CLUSTER_EVERY_MS = 5000;
const CHART_WINDOW_MS = 5 * 60 * 1000;
const ONLINE_PAGE_SIZE = 50;
const SESSION_KEY = 'tim-console-session';
const SVG_NS = 'http://www.w3.org/2000/svg';
// setTimeout fires at once beyond this delay, so a far expiry is left to the server's 401.
const MAX_TIMER_MS = 2 ** 31 - 1;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// DOM helpers

/** An HTML element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** An SVG element with attributes and children. */
function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function setResult(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle('error', isError);
}

// ---------------------------------------------------------------------------------------
// Formatting

function formatInt(value) {
  // BigInt keeps large counters in plain digits where String() would switch to 1e+21.
  return Number.isFinite(value) ? BigInt(Math.round(value)).toString() : '–';
}

function formatNumber(value) {
  if (value == null || !Number.isFinite(value)) return '–';
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return String(Number(value.toFixed(digits)));
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** The binary unit that suits `max` bytes: its divisor and name. */
function byteUnit(max) {
  let i = 0;
  while (i < BYTE_UNITS.length - 1 && max >= 1024 ** (i + 1)) i += 1;
  return { div: 1024 ** i, name: BYTE_UNITS[i] };
}

function formatBytes(bytes) {
  if (bytes == null || !Number.isFinite(bytes)) return '–';
  const unit = byteUnit(bytes);
  return `${formatNumber(bytes / unit.div)} ${unit.name}`;
}

function formatTime(date) {
  return date.toLocaleTimeString([], { hour12: false });
}

/** A profile value as text: lists joined, maps as key=value pairs. */
function formatValue(value) {
  if (value == null) return '–';
  if (Array.isArray(value)) return value.map(formatValue).join(', ');
  if (typeof value === 'object') {
    return Object.entries(value).map(([k, v]) => `${k}=${formatValue(v)}`).join('; ');
  }
  return String(value);
}

/** `count noun`, with the noun's plural as needed. */
function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/** Node ids typed by an operator: separated by commas, spaces or newlines, once each. */
function parseNodes(text) {
  return [...new Set(text.split(/[\s,]+/).filter(Boolean))];
}

// ---------------------------------------------------------------------------------------
// Session: the token lives in sessionStorage, so it ends with the tab.

let session = null; // {name, token, role, expires_unix}
let expiryTimer = null;

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY));
    if (saved?.token && !(saved.expires_unix * 1000 <= Date.now())) return saved;
  } catch {
    // A damaged entry is the same as none.
  }
  sessionStorage.removeItem(SESSION_KEY);
  return null;
}

function saveSession(value) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
}

const canWrite = () => session?.role === 'write';

// ---------------------------------------------------------------------------------------
// API calls

class ApiError extends Error {
  constructor(method, path, status, message, code = null) {
    super(message);
    this.name = 'ApiError';
    Object.assign(this, { method, path, status, code });
  }
}

/** Calls the admin API: the parsed JSON answer (text with `text`), null for no content. */
async function api(method, path, { body, text = false, auth = true } = {}) {
  const headers = {};
  if (auth && session) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(method, path, 0, `network error: ${e.message}`);
  }
  if (!response.ok) throw await errorOf(response, method, path);
  const raw = response.status === 204 ? '' : await response.text();
  if (text) return raw;
  try {
    return raw ? JSON.parse(raw) : null;
  } catch {
    throw new ApiError(method, path, response.status, 'the answer is not JSON');
  }
}

/** The ApiError of a failed answer, from its {error, code} body when it has one. */
async function errorOf(response, method, path) {
  const raw = await response.text().catch(() => '');
  let message = raw.trim() || response.statusText;
  let code = null;
  try {
    const body = JSON.parse(raw);
    if (body && typeof body.error === 'string') message = body.error;
    code = body?.code ?? null;
  } catch {
    // Not JSON (a proxy's page, say): the text itself is the best description.
  }
  return new ApiError(method, path, response.status, message, code);
}

function describeError(err) {
  if (!(err instanceof ApiError)) return err?.message ?? String(err);
  const code = err.code != null ? ` (code ${err.code})` : '';
  return err.status ? `${err.status} ${err.message}${code}` : err.message;
}

// ---------------------------------------------------------------------------------------
// Notice: the last API error, until dismissed or replaced.

function showNotice(text) {
  $('notice-text').textContent = text;
  $('notice').hidden = false;
}

function clearNotice() {
  $('notice-text').textContent = '';
  $('notice').hidden = true;
}

/** Shows an error in the notice; a 401 also ends the session. */
function reportError(err) {
  if (!(err instanceof ApiError)) console.error(err);
  const where = err instanceof ApiError ? `${err.method} ${err.path}: ` : '';
  showNotice(`${formatTime(new Date())} ${where}${describeError(err)}`);
  if (err instanceof ApiError && err.status === 401 && session) {
    endSession(`Signed out: ${describeError(err)}`);
  }
}

/** A handler that reports what its async work throws. */
const guarded = (work) => (...args) => work(...args).catch(reportError);

// ---------------------------------------------------------------------------------------
// Sign-in and sign-out

async function signIn(event) {
  event.preventDefault();
  const name = $('signin-name').value.trim();
  const password = $('signin-password').value;
  const error = $('signin-error');
  if (!name || !password) {
    error.textContent = 'Give a name and a password.';
    return;
  }
  const button = $('signin-button');
  button.disabled = true;
  error.textContent = '';
  try {
    const answer = await api('POST', '/v1/login', { body: { name, password }, auth: false });
    $('signin-password').value = '';
    startSession({ name, token: answer.token, role: answer.role, expires_unix: answer.expires_unix });
  } catch (e) {
    error.textContent = describeError(e);
  } finally {
    button.disabled = false;
  }
}

function startSession(value) {
  session = value;
  saveSession(value);
  clearNotice();
  $('signin-error').textContent = '';
  $('whoami').textContent = `${value.name} (${value.role})`;
  applyRole();
  $('signin').hidden = true;
  $('main').hidden = false;
  scheduleExpiry(value.expires_unix);
  startPolling();
  loadInfo().catch(reportError);
  loadOnline(null, 1).catch(reportError);
}

/** Back to the sign-in form, with `reason` shown there. */
function endSession(reason = '') {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  clearTimeout(expiryTimer);
  stopPolling();
  resetViews();
  $('main').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = reason;
  $('signin-name').focus();
}

function scheduleExpiry(expiresUnix) {
  clearTimeout(expiryTimer);
  const delay = expiresUnix * 1000 - Date.now();
  if (delay < MAX_TIMER_MS) {
    expiryTimer = setTimeout(() => endSession('The session expired: sign in again.'), Math.max(delay, 0));
  }
}

/** A read admin sees everything, but the write controls are disabled. */
function applyRole() {
  for (const node of document.querySelectorAll('[data-write]')) node.disabled = !canWrite();
  $('role-note').hidden = canWrite();
}

async function loadInfo() {
  const info = await api('GET', '/v1/info');
  const parts = [`cluster ${info.cluster}`, `node ${info.node}`];
  if (info.version) parts.push(`version ${info.version}`);
  $('node-info').textContent = parts.join(' · ');
}

/** Clears what one admin saw, so the next sign-in starts afresh. */
function resetViews() {
  dashboard.previous = null;
  dashboard.history = [];
  for (const id of ['m-sessions', 'm-messages', 'm-logins', 'm-acked', 'm-members']) $(id).textContent = '–';
  for (const spec of CHARTS) $(spec.id).replaceChildren();
  for (const id of ['m-updated', 'node-info', 'cluster-summary', 'online-page', 'whoami']) $(id).textContent = '';
  $('cluster').tBodies[0].replaceChildren();
  $('online').replaceChildren();
  $('lookup-result').replaceChildren();
  for (const id of ['sys-result', 'ban-result']) setResult($(id), '');
}

// ---------------------------------------------------------------------------------------
// Polling: each task waits for its last call before the next, so a slow node is not piled on.

let pollers = [];

/** Runs `task` now and then `everyMs` after each run ends; the function that stops it. */
function every(everyMs, task) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try {
      await task();
    } catch (e) {
      if (!stopped) reportError(e);
    }
    if (!stopped) timer = setTimeout(run, everyMs);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function startPolling() {
  stopPolling();
  pollers = [every(METRICS_EVERY_MS, pollMetrics), every(CLUSTER_EVERY_MS, pollCluster)];
}

function stopPolling() {
  for (const stop of pollers) stop();
  pollers = [];
}

// ---------------------------------------------------------------------------------------
// Prometheus text format

/**
 * Parses the text exposition format: {samples: Map name → [{labels, value}], types: Map
 * family → type}. Lines it cannot read are skipped, so one odd line never blanks the page.
 */
function parsePrometheus(text) {
  const samples = new Map();
  const types = new Map();
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (!line) continue;
    if (line.startsWith('#')) {
      const type = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line);
      if (type) types.set(type[1], type[2]);
      continue;
    }
    const sample = parseSample(line);
    if (!sample) continue;
    if (!samples.has(sample.name)) samples.set(sample.name, []);
    samples.get(sample.name).push({ labels: sample.labels, value: sample.value });
  }
  return { samples, types };
}

/** One sample line: `name{label="value",...} value [timestamp]`, or null. */
function parseSample(line) {
  const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!name) return null;
  let pos = name[0].length;
  let labels = {};
  while (line[pos] === ' ' || line[pos] === '\t') pos += 1;
  if (line[pos] === '{') {
    const parsed = parseLabels(line, pos + 1);
    if (!parsed) return null;
    ({ labels, pos } = parsed);
  }
  const [valueText] = line.slice(pos).trim().split(/\s+/);
  const value = parseValue(valueText);
  return Number.isNaN(value) && valueText !== 'NaN' ? null : { name: name[0], labels, value };
}

/** The labels from just after `{` through the closing `}`: {labels, pos after it}, or null. */
function parseLabels(line, start) {
  const labels = {};
  let pos = start;
  for (;;) {
    while (line[pos] === ' ' || line[pos] === ',') pos += 1;
    if (line[pos] === '}') return { labels, pos: pos + 1 };
    const name = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(line.slice(pos));
    if (!name) return null;
    pos += name[0].length;
    let value = '';
    // Escapes in label values: \\, \" and \n.
    while (pos < line.length && line[pos] !== '"') {
      if (line[pos] === '\\' && pos + 1 < line.length) {
        pos += 1;
        value += line[pos] === 'n' ? '\n' : line[pos];
      } else {
        value += line[pos];
      }
      pos += 1;
    }
    if (pos >= line.length) return null;
    labels[name[1]] = value;
    pos += 1;
  }
}

/** A sample value: a float, +Inf, -Inf or NaN; NaN too for text that is none of them. */
function parseValue(text) {
  if (text === undefined || text === '') return NaN;
  if (/^\+?Inf$/i.test(text)) return Infinity;
  if (/^-Inf$/i.test(text)) return -Infinity;
  return Number(text);
}

/** The sum of a family's samples over all their labels, or null when it is absent. */
function total(metrics, name) {
  const samples = metrics.samples.get(name);
  if (!samples) return null;
  return samples.reduce((sum, sample) => sum + sample.value, 0);
}

/** A histogram's cumulative buckets (ascending `le`), sum and count, summed over other labels. */
function histogram(metrics, name) {
  const byBound = new Map();
  for (const { labels, value } of metrics.samples.get(`${name}_bucket`) ?? []) {
    const le = parseValue(labels.le);
    if (!Number.isNaN(le)) byBound.set(le, (byBound.get(le) ?? 0) + value);
  }
  const buckets = [...byBound].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  return { buckets, sum: total(metrics, `${name}_sum`), count: total(metrics, `${name}_count`) };
}

/** The observations between two scrapes of a histogram; null when its counters were reset. */
function histogramDelta(before, after) {
  const earlier = new Map(before.buckets.map((b) => [b.le, b.count]));
  const buckets = after.buckets.map((b) => ({ le: b.le, count: b.count - (earlier.get(b.le) ?? 0) }));
  const count = after.count - before.count;
  if (count < 0 || buckets.some((b) => b.count < 0)) return null;
  return { buckets, sum: after.sum - before.sum, count };
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside the bucket where it
 * falls (as Prometheus' histogram_quantile); null without observations.
 */
function quantile(q, buckets) {
  const observed = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (!(observed > 0)) return null;
  const rank = q * observed;
  let lower = 0;
  let below = 0;
  for (const { le, count } of buckets) {
    if (count >= rank) {
      // In the open +Inf bucket the last finite bound is the best that can be said.
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / (count - below);
    }
    lower = le;
    below = count;
  }
  return lower;
}

// ---------------------------------------------------------------------------------------
// Dashboard

const dashboard = {
  previous: null, // the last scrape: {t, metrics}
  history: [], // one point per scrape within the chart window
};

async function pollMetrics() {
  const asker = session;
  const text = await api('GET', '/metrics', { text: true });
  if (session !== asker) return; // signed out meanwhile: these figures belong to no one now
  const scrape = { t: Date.now(), metrics: parsePrometheus(text) };
  showTiles(scrape.metrics);
  dashboard.history.push(chartPoint(scrape, dashboard.previous));
  dashboard.previous = scrape;
  dashboard.history = dashboard.history.filter((p) => p.t >= scrape.t - CHART_WINDOW_MS);
  for (const spec of CHARTS) drawChart($(spec.id), spec, dashboard.history);
  $('m-updated').textContent = `updated ${formatTime(new Date(scrape.t))}`;
}

function showTiles(metrics) {
  $('m-sessions').textContent = formatInt(total(metrics, 'tim_sessions'));
  $('m-messages').textContent = formatInt(total(metrics, 'tim_messages_stored_total'));
  $('m-logins').textContent = formatInt(total(metrics, 'tim_logins_total'));
  $('m-acked').textContent = formatInt(total(metrics, 'tim_deliveries_acked_total'));
  const live = formatInt(total(metrics, 'tim_cluster_live_members'));
  $('m-members').textContent = `${live} / ${formatInt(total(metrics, 'tim_cluster_members'))}`;
}

/** Per-second rate of a counter between scrapes; null on the first scrape or after a reset. */
function rate(name, scrape, previous) {
  if (!previous) return null;
  const before = total(previous.metrics, name);
  const after = total(scrape.metrics, name);
  const seconds = (scrape.t - previous.t) / 1000;
  if (before == null || after == null || after < before || seconds <= 0) return null;
  return (after - before) / seconds;
}

/** Store commit latency in ms over the last interval: average and p99 (null when idle). */
function commitLatency(scrape, previous) {
  if (!previous) return { avg: null, p99: null };
  const name = 'tim_store_commit_seconds';
  const delta = histogramDelta(histogram(previous.metrics, name), histogram(scrape.metrics, name));
  if (!delta || !(delta.count > 0)) return { avg: null, p99: null };
  const p99 = quantile(0.99, delta.buckets);
  return { avg: (delta.sum / delta.count) * 1000, p99: p99 == null ? null : p99 * 1000 };
}

/** What the charts plot for one scrape: rates from counter deltas, gauges as they are. */
function chartPoint(scrape, previous) {
  const latency = commitLatency(scrape, previous);
  return {
    t: scrape.t,
    messagesRate: rate('tim_messages_stored_total', scrape, previous),
    framesRate: rate('tim_frames_in_total', scrape, previous),
    sessions: total(scrape.metrics, 'tim_sessions'),
    commitAvgMs: latency.avg,
    commitP99Ms: latency.p99,
    memtable: total(scrape.metrics, 'tim_rocksdb_memtable_bytes'),
    pendingCompaction: total(scrape.metrics, 'tim_rocksdb_pending_compaction_bytes'),
  };
}

// Units: how an axis is scaled and titled for a maximum, and how a current value reads.
const UNITS = {
  perSecond: { axis: () => ({ div: 1, title: 'per second' }), format: (v) => `${formatNumber(v)}/s` },
  sessions: { axis: () => ({ div: 1, title: 'sessions' }), format: formatInt, minStep: 1 },
  ms: { axis: () => ({ div: 1, title: 'milliseconds' }), format: (v) => `${formatNumber(v)} ms` },
  bytes: {
    axis: (max) => {
      const unit = byteUnit(max);
      return { div: unit.div, title: unit.name };
    },
    format: formatBytes,
  },
};

const CHARTS = [
  {
    id: 'chart-messages',
    unit: UNITS.perSecond,
    series: [
      { key: 'messagesRate', label: 'messages stored' },
      { key: 'framesRate', label: 'frames in' },
    ],
  },
  { id: 'chart-sessions', unit: UNITS.sessions, series: [{ key: 'sessions', label: 'sessions' }] },
  {
    id: 'chart-store',
    unit: UNITS.ms,
    series: [
      { key: 'commitAvgMs', label: 'commit average' },
      { key: 'commitP99Ms', label: 'commit p99' },
    ],
  },
  {
    id: 'chart-rocksdb',
    unit: UNITS.bytes,
    series: [
      { key: 'memtable', label: 'memtable' },
      { key: 'pendingCompaction', label: 'pending compaction' },
    ],
  },
];

// ---------------------------------------------------------------------------------------
// Charts: SVG line charts over the last five minutes, in the viewBox of each <svg>.

const BOX = { width: 640, height: 220, left: 64, right: 16, top: 34, bottom: 40 };

/** A round step (1, 2 or 5 times a power of ten) near `raw`. */
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

/** Y axis ticks from 0 up to a round top at or above `max`. */
function axisTicks(max, minStep = 0) {
  const step = Math.max(niceStep((max > 0 ? max : 1) / 4), minStep);
  const top = Math.max(Math.ceil(max / step), 1) * step;
  const ticks = [];
  for (let i = 0; i * step <= top + step / 2; i += 1) ticks.push(i * step);
  return { top, ticks };
}

function drawChart(svg, spec, history) {
  const now = history.length ? history[history.length - 1].t : Date.now();
  const values = spec.series.flatMap((s) => history.map((p) => p[s.key]).filter(Number.isFinite));
  const max = Math.max(0, ...values);
  const axis = spec.unit.axis(max);
  const { top, ticks } = axisTicks(max / axis.div, spec.unit.minStep);
  const plot = {
    x: (t) => BOX.left + ((t - (now - CHART_WINDOW_MS)) / CHART_WINDOW_MS) * (BOX.width - BOX.left - BOX.right),
    y: (v) => BOX.height - BOX.bottom - (v / axis.div / top) * (BOX.height - BOX.top - BOX.bottom),
  };
  svg.replaceChildren(
    ...yAxis(ticks, axis),
    ...xAxis(now, plot),
    ...spec.series.map((s, i) => seriesPath(history, s.key, i, plot)),
    ...legend(spec, history),
  );
}

function yAxis(ticks, axis) {
  const top = ticks[ticks.length - 1];
  const nodes = ticks.map((tick) => {
    const y = BOX.height - BOX.bottom - (tick / top) * (BOX.height - BOX.top - BOX.bottom);
    return svgEl(
      'g',
      { class: 'tick' },
      svgEl('line', { class: tick === 0 ? 'axis' : 'grid', x1: BOX.left, x2: BOX.width - BOX.right, y1: y, y2: y }),
      svgEl('text', { x: BOX.left - 6, y: y + 4, 'text-anchor': 'end' }, formatNumber(tick)),
    );
  });
  const middle = (BOX.top + BOX.height - BOX.bottom) / 2;
  const title = svgEl(
    'text',
    { class: 'axis-title', x: 14, y: middle, 'text-anchor': 'middle', transform: `rotate(-90 14 ${middle})` },
    axis.title,
  );
  return [...nodes, title];
}

/** One tick a minute, labelled in minutes before the newest scrape. */
function xAxis(now, plot) {
  const bottom = BOX.height - BOX.bottom;
  const nodes = [];
  for (let minutes = 5; minutes >= 0; minutes -= 1) {
    const x = plot.x(now - minutes * 60000);
    nodes.push(
      svgEl(
        'g',
        { class: 'tick' },
        svgEl('line', { class: 'axis', x1: x, x2: x, y1: bottom, y2: bottom + 4 }),
        svgEl('text', { x, y: bottom + 16, 'text-anchor': 'middle' }, minutes ? `-${minutes}` : 'now'),
      ),
    );
  }
  const middle = (BOX.left + BOX.width - BOX.right) / 2;
  nodes.push(svgEl('text', { class: 'axis-title', x: middle, y: BOX.height - 4, 'text-anchor': 'middle' }, 'minutes ago'));
  return nodes;
}

/** A series as one path; missing values (no rate yet, a reset, an idle store) leave gaps. */
function seriesPath(history, key, index, plot) {
  let d = '';
  let drawing = false;
  for (const point of history) {
    const value = point[key];
    if (!Number.isFinite(value)) {
      drawing = false;
      continue;
    }
    d += `${drawing ? 'L' : 'M'}${plot.x(point.t).toFixed(1)},${plot.y(value).toFixed(1)}`;
    drawing = true;
  }
  // A lone point has no length: a round cap on a zero-length segment still shows it.
  d = d.replace(/M([\d.-]+,[\d.-]+)(?=M|$)/g, 'M$1L$1');
  return svgEl('path', { class: `line s${index}`, d });
}

/** The series' names and current values, across the top. */
function legend(spec, history) {
  const last = history[history.length - 1] ?? {};
  const width = (BOX.width - BOX.left - BOX.right) / spec.series.length;
  return spec.series.map((s, i) => {
    const x = BOX.left + i * width;
    return svgEl(
      'g',
      { class: 'legend' },
      svgEl('rect', { class: `swatch s${i}`, x, y: 10, width: 12, height: 12, rx: 2 }),
      svgEl('text', { x: x + 18, y: 20 }, `${s.label}: `, svgEl('tspan', { class: 'current' }, spec.unit.format(last[s.key]))),
    );
  });
}

// ---------------------------------------------------------------------------------------
// Cluster map

async function pollCluster() {
  const asker = session;
  const data = await api('GET', '/v1/cluster');
  if (session === asker) renderCluster(data);
}

function renderCluster(data) {
  const slotCount = Number(data.slots) || 4096;
  const members = Array.isArray(data.members) ? data.members : [];
  const self = String(data.node);
  $('cluster').tBodies[0].replaceChildren(...members.map((m) => clusterRow(m, slotCount, self)));
  const live = members.filter((m) => m.live);
  const owned = live.reduce((sum, m) => sum + (Number(m.slots) || 0), 0);
  $('cluster-summary').textContent =
    `${plural(members.length, 'member')}, ${live.length} live, ${owned} of ${slotCount} slots owned by live members`;
}

function clusterRow(member, slotCount, self) {
  const node = String(member.node);
  const row = el('tr', { 'data-node': node });
  row.classList.toggle('self', node === self);
  row.classList.toggle('down', !member.live);
  const nodeCell = el('td', { class: 'mono' }, node);
  if (node === self) nodeCell.append(' ', el('span', { class: 'badge' }, 'this node'));
  const fenced = Array.isArray(member.fenced_to) ? member.fenced_to : [];
  row.append(
    nodeCell,
    el('td', {}, String(member.state ?? '–')),
    el('td', { class: member.live ? 'ok' : 'bad' }, member.live ? 'yes' : 'no'),
    el('td', { class: 'mono' }, String(member.client ?? '–')),
    slotsCell(Number(member.slots) || 0, slotCount),
    el('td', { class: 'num' }, formatInt(member.leaving_slots ?? 0)),
    el('td', { class: 'num' }, formatInt(member.sessions ?? 0)),
    el('td', { class: 'num' }, formatInt(member.msg_rate ?? 0)),
    el('td', { class: 'num' }, `${formatInt(member.moved_slots ?? 0)} / ${formatBytes(member.moved_bytes ?? 0)}`),
    el('td', { class: 'num' }, `${formatBytes(member.move_rate ?? 0)}/s`),
    el('td', { class: 'mono' }, fenced.length ? `→ ${fenced.join(', ')}` : '–'),
  );
  return row;
}

/** The slot count with a bar of its share of all slots. */
function slotsCell(slots, slotCount) {
  const share = Math.min(slots / slotCount, 1);
  const fill = el('span', { class: 'fill' });
  // CSSOM, not a style attribute: allowed under the page's Content-Security-Policy.
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const box = el('div', { class: 'slots' }, el('span', { class: 'num' }, String(slots)), el('span', { class: 'bar' }, fill));
  return el('td', { title: `${slots} of ${slotCount} slots (${(share * 100).toFixed(1)}%)` }, box);
}

// ---------------------------------------------------------------------------------------
// Online users, a page at a time

const online = { after: null, next: null, page: 1 };

async function loadOnline(after, page) {
  const query = new URLSearchParams({ limit: String(ONLINE_PAGE_SIZE) });
  if (after) query.set('after', after);
  const data = await api('GET', `/v1/online?${query}`);
  Object.assign(online, { after, next: data.next ?? null, page });
  const users = Array.isArray(data.users) ? data.users : [];
  const items = users.map((u) => userItem(String(u.node), plural(u.sessions, 'session')));
  if (!items.length) items.push(el('li', { class: 'muted' }, page === 1 ? 'Nobody is online.' : 'No more users.'));
  $('online').replaceChildren(...items);
  const unreachable = Array.isArray(data.unreachable) && data.unreachable.length
    ? ` · not answering: ${data.unreachable.join(', ')}`
    : '';
  $('online-page').textContent = `page ${page}, ${plural(users.length, 'user')}${unreachable}`;
  $('online-next').disabled = !online.next;
  $('online-first').disabled = page === 1;
}

/** A list item for a user that opens their lookup when chosen. */
function userItem(node, detail) {
  const item = el('li', { 'data-node': node, tabindex: '0', role: 'button' }, el('span', { class: 'mono' }, node));
  if (detail) item.append(' ', el('span', { class: 'muted' }, detail));
  return item;
}

/** Lets a list's user items open the lookup, by click or by Enter. */
function openLookupFrom(list) {
  const open = (event) => {
    const item = event.target.closest('li[data-node]');
    if (!item || !list.contains(item)) return;
    $('lookup-input').value = item.dataset.node;
    $('lookup-domain').value = '';
    lookup(item.dataset.node, '').catch(reportError);
    $('lookup-result').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  };
  list.addEventListener('click', open);
  list.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') open(event);
  });
}

// ---------------------------------------------------------------------------------------
// User lookup

let lookupSeq = 0; // only the newest lookup may draw its result

async function lookupSubmitted(event) {
  event.preventDefault();
  const input = $('lookup-input').value.trim();
  if (!input) {
    $('lookup-result').replaceChildren(el('p', { class: 'error' }, 'Give a node id or a login name.'));
    return;
  }
  await lookup(input, $('lookup-domain').value.trim());
}

async function lookup(input, domain) {
  const seq = ++lookupSeq;
  const target = $('lookup-result');
  target.replaceChildren(el('p', { class: 'muted' }, `Looking up ${input}…`));
  let info;
  try {
    info = await findUser(input, domain);
  } catch (e) {
    if (seq === lookupSeq) {
      const text = e.status === 404 ? `No user with node id or name “${input}”.` : describeError(e);
      target.replaceChildren(el('p', { class: 'error' }, text));
    }
    throw e;
  }
  if (seq !== lookupSeq) return;
  const node = String(info.node);
  const roster = el('ul', { class: 'userlist compact' });
  openLookupFrom(roster);
  const groups = el('ul', { class: 'userlist compact plain' });
  target.replaceChildren(...userView(info), el('h4', {}, 'Roster'), roster, el('h4', {}, 'Groups'), groups);
  const path = `/v1/users/${encodeURIComponent(node)}`;
  await Promise.all([
    fillNodes(roster, `${path}/roster`, true, seq),
    fillNodes(groups, `${path}/groups`, false, seq),
  ]);
}

/** The user by node id, else by login name (in `domain` when given). */
async function findUser(input, domain) {
  try {
    return await api('GET', `/v1/users/${encodeURIComponent(input)}`);
  } catch (e) {
    // 400: not a node at all (a login name seldom is); 404: no such user. Either way, try
    // the input as a login name.
    if (e.status !== 404 && e.status !== 400) throw e;
  }
  const query = new URLSearchParams({ name: input });
  if (domain) query.set('domain', domain);
  return api('GET', `/v1/users?${query}`);
}

function userView(info) {
  const sessions = Array.isArray(info.sessions) ? info.sessions : [];
  const list = el('dl', { class: 'fields' });
  const field = (name, value, cls = '') => list.append(el('dt', {}, name), el('dd', { class: cls }, value));
  const banned = info.banned_until_unix != null && info.banned_until_unix * 1000 > Date.now();
  field('node', String(info.node), 'mono');
  field('ban', banText(info.banned_until_unix), banned ? 'banned' : '');
  if (info.profile) {
    for (const [key, value] of Object.entries(info.profile)) field(PROFILE_LABELS[key] ?? key, formatValue(value));
  } else {
    field('profile', 'none set');
  }
  const title = el('h3', { class: 'mono' }, String(info.node));
  return [title, list, el('h4', {}, `Sessions (${sessions.length})`), sessionsTable(sessions)];
}

// TIM's profile keys, as an operator reads them.
const PROFILE_LABELS = { nickName: 'nickname', brithday: 'birthday', photoTidAlbum: 'photo album' };

function banText(untilUnix) {
  if (untilUnix == null) return 'not banned';
  const until = new Date(untilUnix * 1000);
  return until > new Date() ? `banned until ${until.toLocaleString()}` : `not banned (a ban ended ${until.toLocaleString()})`;
}

function sessionsTable(sessions) {
  if (!sessions.length) return el('p', { class: 'muted' }, 'Not online.');
  const head = el('tr', {}, el('th', {}, 'tim node'), el('th', {}, 'termtyp'));
  const rows = sessions.map((s) => el('tr', {}, el('td', { class: 'mono' }, String(s.node)), el('td', {}, formatValue(s.termtyp))));
  return el('table', { class: 'small' }, el('thead', {}, head), el('tbody', {}, ...rows));
}

/** Fills `list` with the {nodes} of `path`; users in it open their own lookup. */
async function fillNodes(list, path, users, seq) {
  list.replaceChildren(el('li', { class: 'muted' }, 'loading…'));
  try {
    const data = await api('GET', path);
    if (seq !== lookupSeq) return;
    const nodes = (Array.isArray(data?.nodes) ? data.nodes : []).map((n) => (typeof n === 'string' ? n : formatValue(n)));
    const items = nodes.map((node) => (users ? userItem(node) : el('li', { class: 'mono' }, node)));
    list.replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'none')]));
  } catch (e) {
    if (seq === lookupSeq) list.replaceChildren(el('li', { class: 'error' }, describeError(e)));
    reportError(e);
  }
}

// ---------------------------------------------------------------------------------------
// Write actions

/** Runs a write action with its button disabled; failures go to `out` and the notice. */
async function withButton(button, out, action) {
  button.disabled = true;
  try {
    await action();
  } catch (e) {
    setResult(out, `Failed: ${describeError(e)}`, true);
    reportError(e);
  } finally {
    button.disabled = !canWrite();
  }
}

/** The nodes typed in a field, or null with the reason shown in `out`. */
function nodesFrom(field, out) {
  const nodes = parseNodes($(field).value);
  if (!nodes.length) setResult(out, 'Give at least one node.', true);
  return nodes.length ? nodes : null;
}

async function sendSystemMessage(event) {
  event.preventDefault();
  const out = $('sys-result');
  if (!canWrite()) return;
  const nodes = nodesFrom('sys-nodes', out);
  const text = $('sys-text').value;
  if (!nodes) return;
  if (!text.trim()) return setResult(out, 'Give the text of the message.', true);
  await withButton($('sys-send'), out, async () => {
    const answer = await api('POST', '/v1/system-messages', { body: { nodes, message: { dataString: text } } });
    const unknown = answer?.unknown ?? [];
    setResult(out, `sent to ${answer?.sent ?? 0}${unknown.length ? `; unknown nodes: ${unknown.join(', ')}` : ''}`);
  });
}

async function ban(event) {
  event.preventDefault();
  const out = $('ban-result');
  if (!canWrite()) return;
  const nodes = nodesFrom('ban-nodes', out);
  const seconds = Number($('ban-seconds').value);
  if (!nodes) return;
  if (!Number.isInteger(seconds) || seconds < 1) return setResult(out, 'Seconds must be a whole number, at least 1.', true);
  await withButton($('ban-button'), out, async () => {
    const answer = await api('POST', '/v1/bans', { body: { nodes, seconds } });
    const unknown = answer?.unknown ?? [];
    setResult(
      out,
      `banned ${answer?.banned ?? 0} for ${seconds} s, ${plural(answer?.sessions_closed ?? 0, 'session')} closed` +
        (unknown.length ? `; unknown nodes: ${unknown.join(', ')}` : ''),
    );
  });
}

async function unban() {
  const out = $('ban-result');
  if (!canWrite()) return;
  const nodes = nodesFrom('ban-nodes', out);
  if (!nodes) return;
  await withButton($('unban-button'), out, async () => {
    const lifted = [];
    const failed = [];
    for (const node of nodes) {
      try {
        await api('DELETE', `/v1/bans/${encodeURIComponent(node)}`);
        lifted.push(node);
      } catch (e) {
        failed.push(`${node} (${describeError(e)})`);
        reportError(e);
        if (e.status === 401) return;
      }
    }
    const parts = [];
    if (lifted.length) parts.push(`unbanned ${lifted.join(', ')}`);
    if (failed.length) parts.push(`not unbanned: ${failed.join('; ')}`);
    setResult(out, parts.join('; '), failed.length > 0);
  });
}

// ---------------------------------------------------------------------------------------
// Start

function boot() {
  $('signin-form').addEventListener('submit', guarded(signIn));
  $('signout').addEventListener('click', () => {
    clearNotice();
    endSession();
  });
  $('notice-close').addEventListener('click', clearNotice);
  $('online-refresh').addEventListener('click', guarded(() => loadOnline(online.after, online.page)));
  $('online-next').addEventListener('click', guarded(() => loadOnline(online.next, online.page + 1)));
  $('online-first').addEventListener('click', guarded(() => loadOnline(null, 1)));
  openLookupFrom($('online'));
  $('lookup-form').addEventListener('submit', guarded(lookupSubmitted));
  $('sys-form').addEventListener('submit', guarded(sendSystemMessage));
  $('ban-form').addEventListener('submit', guarded(ban));
  $('unban-button').addEventListener('click', guarded(unban));

  const saved = loadSession();
  if (saved) startSession(saved);
  else endSession();
}

boot();
