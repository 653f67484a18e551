// tenement dashboard: vanilla JS, no build step, no third-party requests.
// Talks to the management API of the server that served it (same origin).

const TOKEN_KEY = 'tenement.token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const SCRAPE_EVERY_MS = 3000;
const CHART_POINTS = 40;
const MAX_LOG_LINES = 1000;

const state = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  authOk: false,
  page: null,
  // Bumped on every page switch and auth change: stale timers and answers are dropped.
  gen: 0,
  timers: [],
  sampler: null,
  samplerGen: 0,
  instances: [],
  // The token's scope (`app` or `app:user123`; null: the whole API): the dashboard shows only
  // what it may use.
  scope: null,
  events: null,
  // Metrics sampling (kept across page switches so the charts keep their history).
  lastScrape: null,
  series: new Map(), // process -> [{t, rps, p99}]
  metricsNote: '',
};

// ---------------------------------------------------------------- DOM helpers

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function pill(text) {
  return h('span', { class: `pill s-${String(text).replace(/[^a-z-]/gi, '')}` }, text);
}

function emptyRow(cols, text) {
  return h('tr', {}, h('td', { class: 'empty', colspan: cols }, text));
}

function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function fmtDateTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.toLocaleDateString()} ${fmtTime(iso)}`;
}

function fmtAgo(iso) {
  if (!iso) return 'never';
  const secs = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return `${fmtDuration(secs)} ago`;
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return '–';
  const s = Math.floor(secs);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function fmtRate(r) {
  if (r === null || r === undefined) return '–';
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return '–';
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

// ---------------------------------------------------------------- banner

let bannerTimer = null;

function banner(text, kind = 'error', sticky = true) {
  const b = $('banner');
  clearTimeout(bannerTimer);
  if (!text) {
    b.hidden = true;
    b.textContent = '';
    return;
  }
  b.textContent = text;
  b.className = kind === 'info' ? 'banner info' : 'banner';
  b.dataset.kind = kind;
  b.hidden = false;
  if (!sticky) bannerTimer = setTimeout(() => banner(''), 6000);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  /** `data`: the answer's JSON body, if any (a refused reload's errors). */
  constructor(status, message, data = null) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

/** Authorization for the API: none when the server trusts this client (admin_loopback_trusted). */
function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(method, path, body) {
  if (!state.token && !state.noToken) throw new ApiError(401, 'no token');
  const gen = state.gen;
  const headers = authHeaders();
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach ten (${e.message})`);
  }
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  const msg = (data && data.error) || (typeof data === 'string' ? data : res.statusText);
  if (res.status === 401) {
    if (gen === state.gen) authFailed(401, msg);
    throw new ApiError(401, msg);
  }
  if (res.status === 429) {
    if (gen === state.gen) authFailed(429, msg, res.headers.get('Retry-After'));
    throw new ApiError(429, msg);
  }
  if (!res.ok) throw new ApiError(res.status, msg || `HTTP ${res.status}`, data);
  return data;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
}

// ---------------------------------------------------------------- auth

function setConn(kind, text) {
  const c = $('conn');
  c.dataset.state = kind;
  c.textContent = text;
}

// Leave the current page: its timers and its log stream stop.
function stopPage() {
  state.gen += 1;
  for (const t of state.timers) clearTimeout(t);
  state.timers = [];
  if (state.events) {
    state.events.close();
    state.events = null;
  }
}

// Stop everything, metrics sampling included (auth lost or token forgotten).
function stopAll() {
  stopPage();
  clearTimeout(state.sampler);
  state.sampler = null;
  state.samplerGen = (state.samplerGen || 0) + 1;
}

// /metrics is sampled every few seconds on every page, so the charts have a steady history.
function startSampler() {
  clearTimeout(state.sampler);
  const mine = (state.samplerGen = (state.samplerGen || 0) + 1);
  const tick = async () => {
    await scrapeMetrics();
    if (!state.authOk || mine !== state.samplerGen) return;
    if (state.page === 'overview') drawCharts();
    state.sampler = setTimeout(tick, SCRAPE_EVERY_MS);
  };
  tick();
}

function showAuth(message) {
  $('auth').hidden = false;
  if (message) $('auth-msg').textContent = message;
  $('token-input').focus();
}

function authFailed(status, msg, retryAfter) {
  stopAll();
  state.authOk = false;
  for (const p of document.querySelectorAll('.page')) p.hidden = true;
  setConn('bad', status === 401 ? 'token rejected' : 'slowed down');
  if (status === 401) {
    // A rejected token is forgotten: reloading the page must not fail again and again.
    localStorage.removeItem(TOKEN_KEY);
    state.token = '';
    banner(`token rejected: create one with \`ten token-gen\` on the server${msg ? ` (${msg})` : ''}`);
    showAuth('Enter a valid API token. Create one on the server with `ten token-gen`.');
  } else {
    const wait = retryAfter ? ` Retry in ${retryAfter} s.` : '';
    banner(`too many failed attempts from this address (429): wait before trying again.${wait}`);
    showAuth('Too many failed attempts: wait, then enter a valid token.');
  }
}

async function useToken(token) {
  stopAll();
  state.token = token.trim();
  if (!state.token && !state.noToken) {
    showAuth();
    return;
  }
  setConn('none', 'checking…');
  try {
    const list = await api('GET', '/api/instances');
    state.instances = list || [];
    const me = await api('GET', '/api/whoami');
    state.scope = (me && me.scope) || null;
  } catch (e) {
    if (e.status !== 401 && e.status !== 429) {
      banner(`cannot check the token: ${e.message}`);
      setConn('bad', 'unreachable');
      // Keep the token: the server may come back. Retry in a while.
      state.timers.push(setTimeout(() => useToken(state.token), 5000));
    }
    return;
  }
  if (state.token) localStorage.setItem(TOKEN_KEY, state.token);
  state.authOk = true;
  $('auth').hidden = true;
  $('token-input').value = '';
  banner('');
  setConn('ok', state.scope ? `connected (scoped to ${state.scope})` : 'connected');
  applyScope();
  updateProcessLists();
  startSampler();
  route();
}

/** A scoped token: no Deploys or Fleet pages, no events of ten itself, no Stop. */
function applyScope() {
  const scoped = !!state.scope;
  for (const a of document.querySelectorAll('#nav a')) {
    if (SCOPED_HIDDEN.includes(a.dataset.page)) a.hidden = scoped;
  }
  $('ov-events-card').hidden = scoped;
}

// ---------------------------------------------------------------- routing

const PAGES = {
  overview: startOverview,
  instances: startInstances,
  logs: startLogs,
  deploys: startDeploys,
  fleet: startFleet,
};

// Pages a scoped token cannot use (their routes answer 403).
const SCOPED_HIDDEN = ['deploys', 'fleet'];

function route() {
  const name = (location.hash.replace(/^#\/?/, '') || 'overview').split('?')[0];
  const page = PAGES[name] && !(state.scope && SCOPED_HIDDEN.includes(name)) ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  if (!state.authOk) return;
  stopPage();
  state.page = page;
  for (const p of document.querySelectorAll('.page')) p.hidden = p.dataset.page !== page;
  document.title = `tenement · ${page}`;
  PAGES[page](state.gen);
}

/// Run `fn` now and then every `ms` while the page (generation) is current.
function every(gen, ms, fn) {
  const tick = async () => {
    if (gen !== state.gen) return;
    try {
      await fn();
    } catch (e) {
      if (gen === state.gen && e.status !== 401 && e.status !== 429) banner(e.message, 'error', false);
    }
    if (gen === state.gen) state.timers.push(setTimeout(tick, ms));
  };
  tick();
}

// ---------------------------------------------------------------- instances (shared)

function updateProcessLists() {
  const procs = [...new Set(state.instances.map((i) => i.process))].sort();
  const dl = $('processes');
  dl.replaceChildren(...procs.map((p) => h('option', { value: p })));
  const sel = $('log-process');
  const current = sel.value;
  sel.replaceChildren(
    h('option', { value: '' }, 'all'),
    ...(state.scope ? procs : ['ten', ...procs]).map((p) => h('option', { value: p }, p)),
  );
  sel.value = [...sel.options].some((o) => o.value === current) ? current : '';
}

async function loadInstances() {
  state.instances = (await api('GET', '/api/instances')) || [];
  updateProcessLists();
  return state.instances;
}

// ---------------------------------------------------------------- overview

function startOverview(gen) {
  drawCharts();
  every(gen, SCRAPE_EVERY_MS, async () => {
    const list = await loadInstances();
    if (gen !== state.gen) return;
    const healthy = list.filter((i) => i.state === 'healthy').length;
    $('ov-healthy').textContent = healthy;
    const bad = $('ov-unhealthy');
    bad.textContent = list.length - healthy;
    bad.classList.toggle('zero', list.length === healthy);
    drawCharts();
  });
  every(gen, 5000, async () => {
    if (state.scope) return; // ten's own events are not a scoped token's
    const lines = (await api('GET', '/api/logs?process=ten&limit=20')) || [];
    if (gen !== state.gen) return;
    const body = $('ov-events');
    body.replaceChildren(
      ...(lines.length
        ? lines.map((l) =>
            h('tr', {}, h('td', {}, fmtTime(l.timestamp)), h('td', { class: 'mono' }, l.instance), h('td', { class: 'mono' }, l.message)),
          )
        : [emptyRow(3, 'no events yet')]),
    );
  });
}

// Prometheus text format: [{name, labels, value}]
export function parseProm(text) {
  const out = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let lm;
      while ((lm = re.exec(m[3])) !== null) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    const v = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : parseFloat(m[4]);
    out.push({ name: m[1], labels, value: v });
  }
  return out;
}

// The counters of one scrape, per series (label set): requests and duration buckets.
function counters(samples) {
  const requests = new Map(); // series key -> {process, value}
  const buckets = new Map(); // series key -> {process, le, value}
  let version = null;
  const key = (s) => `${s.name}{${Object.keys(s.labels).sort().map((k) => `${k}=${s.labels[k]}`).join(',')}}`;
  for (const s of samples) {
    if (s.name === 'tenement_requests_total' && s.labels.process) {
      requests.set(key(s), { process: s.labels.process, value: s.value });
    } else if (s.name === 'tenement_request_duration_seconds_bucket' && s.labels.process) {
      const le = s.labels.le === '+Inf' ? Infinity : parseFloat(s.labels.le);
      buckets.set(key(s), { process: s.labels.process, le, value: s.value });
    } else if (s.name === 'tenement_build_info') {
      version = s.labels.version;
    }
  }
  return { requests, buckets, version };
}

// How much a counter grew between two scrapes; a series that went down was reset (its instance
// restarted) and counts from zero, as Prometheus' rate() does.
function growth(cur, prev) {
  const before = prev ? prev.value : 0;
  return cur.value >= before ? cur.value - before : cur.value;
}

// Per process, between two scrapes: requests, and the duration buckets' growth (le -> count).
export function deltas(cur, prev) {
  const procs = new Map();
  const get = (p) => {
    if (!procs.has(p)) procs.set(p, { requests: 0, buckets: new Map() });
    return procs.get(p);
  };
  for (const [k, s] of cur.requests) get(s.process).requests += growth(s, prev.requests.get(k));
  for (const [k, s] of cur.buckets) {
    const b = get(s.process).buckets;
    b.set(s.le, (b.get(s.le) || 0) + growth(s, prev.buckets.get(k)));
  }
  return procs;
}

// The q quantile of the requests in a window, from cumulative bucket counts (le -> count),
// linear within a bucket as Prometheus' histogram_quantile does. null without requests.
export function quantile(q, buckets) {
  const les = [...buckets.keys()].sort((a, b) => a - b);
  const counts = les.map((le) => buckets.get(le) || 0);
  const total = counts.length ? counts[counts.length - 1] : 0;
  if (!total) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (counts[i] >= rank) {
      if (les[i] === Infinity) return i > 0 ? les[i - 1] : null;
      const lo = i > 0 ? les[i - 1] : 0;
      const below = i > 0 ? counts[i - 1] : 0;
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lo + (les[i] - lo) * ((rank - below) / inBucket) : les[i];
    }
  }
  return les.length > 1 ? les[les.length - 2] : null;
}

async function scrapeMetrics() {
  let res;
  try {
    res = await fetch('/metrics', { headers: authHeaders(), cache: 'no-store' });
  } catch (e) {
    state.metricsNote = `cannot read /metrics: ${e.message}`;
    return;
  }
  if (!res.ok) {
    state.metricsNote =
      res.status === 401
        ? '/metrics needs the metrics_token (set in [settings]): charts are off'
        : `/metrics answered ${res.status}`;
    return;
  }
  const now = performance.now();
  const cur = counters(parseProm(await res.text()));
  if (cur.version) $('ov-version').textContent = cur.version;
  state.metricsNote = '';
  const prev = state.lastScrape;
  state.lastScrape = { t: now, ...cur };
  for (const i of state.instances) if (!state.series.has(i.process)) state.series.set(i.process, []);
  if (!prev) return;
  const dt = (now - prev.t) / 1000;
  if (dt <= 0) return;
  const procs = deltas(cur, prev);
  // A process without any request yet has no series: it charts as 0 req/s.
  for (const p of state.series.keys()) if (!procs.has(p)) procs.set(p, { requests: 0, buckets: new Map() });
  for (const [p, d] of procs) {
    const point = { t: Date.now(), rps: d.requests / dt, p99: quantile(0.99, d.buckets) };
    if (!state.series.has(p)) state.series.set(p, []);
    const s = state.series.get(p);
    s.push(point);
    if (s.length > CHART_POINTS) s.splice(0, s.length - CHART_POINTS);
  }
}

function chartPath(points, key, max, w, hgt) {
  const n = CHART_POINTS - 1;
  const x0 = w - (points.length - 1) * (w / n);
  let d = '';
  let pen = false;
  const has = (i) => i >= 0 && i < points.length && points[i][key] !== null && points[i][key] !== undefined;
  points.forEach((pt, i) => {
    if (!has(i)) {
      pen = false;
      return;
    }
    const x = x0 + i * (w / n);
    const y = (hgt - 2 - (max > 0 ? (pt[key] / max) * (hgt - 6) : 0)).toFixed(1);
    // A lone sample (no neighbour to join) is drawn as a short dash so it shows.
    if (!pen && !has(i + 1)) d += `M${(x - 4).toFixed(1)},${y} `;
    d += `${pen || !has(i + 1) ? 'L' : 'M'}${x.toFixed(1)},${y} `;
    pen = true;
  });
  return { d: d.trim(), x0 };
}

function drawChart(process, points) {
  const W = 300;
  const H = 64;
  const last = points[points.length - 1];
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${process} requests per second and p99` });
  s.append(svg('line', { x1: 0, y1: H - 1, x2: W, y2: H - 1, class: 'axis' }));
  if (points.length) {
    const maxRps = Math.max(...points.map((p) => p.rps || 0));
    const maxP99 = Math.max(...points.map((p) => p.p99 || 0));
    const rps = chartPath(points, 'rps', maxRps, W, H);
    if (rps.d) {
      s.append(svg('path', { d: `${rps.d} L${W},${H - 1} L${rps.x0.toFixed(1)},${H - 1} Z`, class: 'rps-area' }));
      s.append(svg('path', { d: rps.d, class: 'rps', 'vector-effect': 'non-scaling-stroke' }));
    }
    const p99 = chartPath(points, 'p99', maxP99, W, H);
    if (p99.d) s.append(svg('path', { d: p99.d, class: 'p99', 'vector-effect': 'non-scaling-stroke' }));
  }
  const peak = points.length ? Math.max(...points.map((p) => p.rps || 0)) : null;
  return h(
    'div',
    { class: 'chart', dataset: { process } },
    h(
      'div',
      { class: 'chart-title' },
      h('span', {}, process),
      h('span', { class: 'muted' }, last ? `${fmtRate(last.rps)} req/s · p99 ${fmtSeconds(last.p99)}` : 'collecting…'),
    ),
    s,
    h(
      'div',
      { class: 'legend' },
      h('span', { class: 'k-rps' }, 'requests/s'),
      h('span', { class: 'k-p99' }, 'p99'),
      h('span', {}, peak !== null ? `peak ${fmtRate(peak)}/s` : ''),
    ),
  );
}

function drawCharts() {
  const box = $('ov-charts');
  // A scoped token charts its own process only (/metrics may list more).
  const mine = new Set(state.instances.map((i) => i.process));
  const names = [...state.series.keys()].filter((n) => !state.scope || mine.has(n)).sort();
  $('ov-charts-note').textContent = state.metricsNote || `sampling /metrics every ${SCRAPE_EVERY_MS / 1000} s`;
  let total = null;
  for (const n of names) {
    const pts = state.series.get(n);
    if (pts.length) total = (total || 0) + pts[pts.length - 1].rps;
  }
  $('ov-rps').textContent = total === null ? '–' : fmtRate(total);
  box.replaceChildren(...(names.length ? names.map((n) => drawChart(n, state.series.get(n))) : [h('p', { class: 'muted' }, 'no processes yet')]));
}

// ---------------------------------------------------------------- instances page

const rows = new Map(); // name -> {tr, cells}

function startInstances(gen) {
  every(gen, 2000, async () => {
    const list = await loadInstances();
    if (gen !== state.gen) return;
    renderInstances(list);
  });
}

function renderInstances(list) {
  const body = $('inst-rows');
  $('inst-count').textContent = `${list.length} in all`;
  const seen = new Set();
  for (const inst of list) {
    seen.add(inst.name);
    let row = rows.get(inst.name);
    if (!row) {
      row = makeRow(inst);
      rows.set(inst.name, row);
    }
    fillRow(row, inst);
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  const order = list.map((i) => rows.get(i.name).tr);
  const placeholder = body.querySelector('tr.placeholder');
  if (placeholder) placeholder.remove();
  order.forEach((tr, i) => {
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  if (!list.length) {
    const p = emptyRow(8, 'no instances: spawn one with `ten spawn process:id`');
    p.classList.add('placeholder');
    body.append(p);
  }
}

function makeRow(inst) {
  const cells = {};
  const td = (field, cls) => (cells[field] = h('td', { class: cls, dataset: { field } }));
  const tr = h(
    'tr',
    { dataset: { name: inst.name } },
    td('name', 'mono'),
    td('state'),
    td('health'),
    td('weight', 'num'),
    td('uptime', 'num'),
    td('restarts', 'num'),
    td('requests', 'num'),
    td('actions', 'actions'),
  );
  const external = inst.kind === 'external';
  const btn = (action, label, cls) =>
    h('button', { type: 'button', class: `small ${cls || ''}`, dataset: { action }, onclick: () => act(action, inst.name) }, label);
  cells.actions.append(
    ...(external ? [] : [btn('restart', 'Restart')]),
    ...(external || state.scope ? [] : [btn('stop', 'Stop', 'danger')]),
    btn('weight', 'Weight'),
  );
  return { tr, cells };
}

function fillRow({ tr, cells }, inst) {
  tr.dataset.state = inst.state;
  cells.name.textContent = inst.name;
  if (inst.kind === 'external') cells.name.append(' ', h('span', { class: 'pill' }, 'external'));
  cells.state.replaceChildren(pill(inst.state));
  if (inst.last_error) cells.state.title = inst.last_error;
  cells.health.replaceChildren(inst.health === '-' ? '–' : pill(inst.health));
  cells.weight.textContent = inst.weight;
  cells.uptime.textContent = fmtDuration(inst.uptime_secs);
  cells.uptime.dataset.secs = inst.uptime_secs ?? '';
  cells.restarts.textContent = inst.restarts ?? 0;
  cells.requests.textContent = inst.requests ?? 0;
}

async function act(action, name) {
  const inst = state.instances.find((i) => i.name === name);
  const texts = {
    restart: [`Restart ${name}?`, 'It is drained and stopped, then started again with the same weight.'],
    stop: [`Stop ${name}?`, 'It is drained and stopped, and not started again until you spawn it.'],
    weight: [`Set the weight of ${name}`, 'Share of the traffic to its process, 0..100 (0 = none).'],
  };
  const [title, text] = texts[action];
  const answer = await confirmDialog(title, text, action === 'weight' ? (inst ? inst.weight : 100) : null);
  if (!answer.ok) return;
  const row = rows.get(name);
  const buttons = row ? [...row.cells.actions.querySelectorAll('button')] : [];
  buttons.forEach((b) => (b.disabled = true));
  const enc = encodeURIComponent(name).replace(/%3A/gi, ':');
  try {
    if (action === 'restart') {
      banner(`restarting ${name}…`, 'info');
      await api('POST', `/api/instances/${enc}/restart`);
      banner(`${name} restarted`, 'info', false);
    } else if (action === 'stop') {
      banner(`stopping ${name}…`, 'info');
      await api('DELETE', `/api/instances/${enc}`);
      banner(`${name} stopped`, 'info', false);
    } else {
      await api('PUT', `/api/instances/${enc}/weight`, { weight: answer.weight });
      banner(`${name}: weight ${answer.weight}`, 'info', false);
    }
  } catch (e) {
    if (e.status !== 401 && e.status !== 429) banner(`${action} ${name} failed: ${e.message}`);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
  if (state.authOk && state.page === 'instances') renderInstances(await loadInstances().catch(() => state.instances));
}

function confirmDialog(title, text, weight) {
  const dlg = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  const row = $('confirm-weight-row');
  const input = $('confirm-weight');
  row.hidden = weight === null;
  input.required = weight !== null;
  input.value = weight === null ? '' : weight;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener(
      'close',
      () => resolve({ ok: dlg.returnValue === 'ok', weight: Number(input.value) }),
      { once: true },
    );
    dlg.showModal();
    (weight === null ? $('confirm-ok') : input).focus();
  });
}

// ---------------------------------------------------------------- logs page

function logFilters() {
  return {
    process: $('log-process').value,
    id: $('log-instance').value.trim(),
    stream: $('log-stream').value,
  };
}

function logLine(l) {
  const cls = ['log-line', l.stream === 'stderr' ? 'stderr' : '', l.process === 'ten' ? 'ten' : ''].join(' ').trim();
  return h(
    'div',
    { class: cls, dataset: { id: l.id } },
    h('span', { class: 't' }, fmtTime(l.timestamp)),
    ' ',
    h('span', { class: 'who' }, `${l.process}:${l.instance}`),
    l.stream === 'stderr' ? ' ! ' : '   ',
    h('span', { class: 'msg' }, l.message),
  );
}

function appendLog(el) {
  const box = $('log-lines');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(el);
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function setLogMode(mode, note) {
  const m = $('log-mode');
  m.textContent = mode;
  m.className = `pill ${mode.startsWith('live') ? 'live' : mode.startsWith('search') ? 'search' : 'off'}`;
  $('log-note').textContent = note || '';
}

function startLogs(gen) {
  if ($('log-search').value.trim()) searchLogs(gen);
  else tailLogs(gen);
}

// Live tail: open the stream first (buffering), then backfill the last lines, then play the
// buffer without the lines the backfill already showed.
async function tailLogs(gen) {
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  const f = logFilters();
  const box = $('log-lines');
  box.replaceChildren();
  setLogMode('live: connecting…');
  let lastId = Infinity;
  const buffered = [];
  const es = new EventSource(`/api/logs/stream${qs(state.token ? { ...f, token: state.token } : f)}`);
  state.events = es;
  const onLine = (l) => {
    if (lastId === Infinity) buffered.push(l);
    else if (!(l.id <= lastId)) appendLog(logLine(l));
  };
  es.addEventListener('open', () => {
    if (gen === state.gen) setLogMode('live', 'new lines appear as they are written');
  });
  es.addEventListener('message', (ev) => {
    try {
      onLine(JSON.parse(ev.data));
    } catch {
      /* not a line */
    }
  });
  es.addEventListener('lagged', (ev) => {
    let missed = '?';
    try {
      missed = JSON.parse(ev.data).missed;
    } catch {
      /* keep ? */
    }
    appendLog(h('div', { class: 'log-line lagged', dataset: { lagged: missed } }, `lagged: this view fell behind and missed ${missed} lines`));
  });
  es.addEventListener('error', () => {
    if (gen !== state.gen) return;
    if (es.readyState === EventSource.CLOSED) {
      setLogMode('stream closed', 'checking the token…');
      // The stream does not say why: ask the API (a 401 shows the token message).
      api('GET', '/api/instances')
        .then(() => {
          if (gen === state.gen) {
            setLogMode('stream closed', 'reconnecting in 3 s');
            state.timers.push(setTimeout(() => gen === state.gen && tailLogs(gen), 3000));
          }
        })
        .catch(() => {});
    } else {
      setLogMode('live: reconnecting…');
    }
  });
  try {
    const lines = (await api('GET', `/api/logs${qs({ ...f, limit: 100 })}`)) || [];
    if (gen !== state.gen) return;
    lines.reverse().forEach((l) => appendLog(logLine(l)));
    lastId = lines.length ? lines[lines.length - 1].id : 0;
  } catch (e) {
    if (gen !== state.gen) return;
    lastId = 0;
    if (e.status === 401 || e.status === 429) return;
    appendLog(h('div', { class: 'log-line note' }, `could not load earlier lines: ${e.message}`));
  }
  for (const l of buffered.splice(0)) if (!(l.id <= lastId)) appendLog(logLine(l));
  box.scrollTop = box.scrollHeight;
}

async function searchLogs(gen) {
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  const search = $('log-search').value.trim();
  const box = $('log-lines');
  setLogMode('search', 'searching…');
  try {
    const lines = (await api('GET', `/api/logs${qs({ ...logFilters(), search, limit: 500 })}`)) || [];
    if (gen !== state.gen) return;
    box.replaceChildren(...lines.reverse().map(logLine));
    if (!lines.length) box.append(h('div', { class: 'log-line note' }, 'no line matches'));
    setLogMode(`search: ${lines.length} line${lines.length === 1 ? '' : 's'}`, `for “${search}” (newest last) — Live tail to go back`);
    box.scrollTop = box.scrollHeight;
  } catch (e) {
    if (gen !== state.gen || e.status === 401 || e.status === 429) return;
    box.replaceChildren(h('div', { class: 'log-line note' }, e.message));
    setLogMode('search failed', e.status === 400 ? 'see the FTS5 syntax: words (crash finds crashed), "exact phrases", AND/OR/NOT' : '');
  }
}

function restartLogs() {
  if (!state.authOk || state.page !== 'logs') return;
  stopPage();
  startLogs(state.gen);
}

// ---------------------------------------------------------------- deploys page

function startDeploys(gen) {
  every(gen, 5000, async () => {
    const rowsData = (await api('GET', '/api/deploys?limit=100')) || [];
    if (gen !== state.gen) return;
    $('deploy-rows').replaceChildren(
      ...(rowsData.length
        ? rowsData.map((r) =>
            h(
              'tr',
              {},
              h('td', {}, fmtDateTime(r.time)),
              h('td', {}, r.action),
              h('td', {}, r.process),
              h('td', { class: 'mono' }, r.instance),
              h('td', { class: String(r.result).startsWith('ok') ? '' : 'bad' }, r.result),
            ),
          )
        : [emptyRow(5, 'no deploys yet')]),
    );
  });
}

async function submitForm(form, run) {
  const result = form.querySelector('[data-role="result"]');
  const button = form.querySelector('button[type="submit"]');
  const data = Object.fromEntries(new FormData(form).entries());
  button.disabled = true;
  result.className = 'result';
  try {
    result.textContent = await run(data, (t) => (result.textContent = t));
    result.className = 'result ok';
  } catch (e) {
    result.textContent = e.status === 401 || e.status === 429 ? '' : `failed: ${e.message}`;
    result.className = 'result err';
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- fleet page

function startFleet(gen) {
  every(gen, 5000, async () => {
    const off = $('fleet-off');
    let servers;
    let tenants;
    try {
      [servers, tenants] = await Promise.all([api('GET', '/api/servers'), api('GET', '/api/tenants')]);
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 404 || e.status === 409) {
        off.textContent = e.status === 404 ? `fleet routing is not available on this server (${e.message})` : e.message;
        off.hidden = false;
        $('fleet-servers').replaceChildren(emptyRow(7, 'fleet routing is off'));
        $('fleet-tenants').replaceChildren(emptyRow(4, 'fleet routing is off'));
        $('migrate-form').querySelector('button').disabled = true;
        return;
      }
      throw e;
    }
    if (gen !== state.gen) return;
    off.hidden = true;
    $('migrate-form').querySelector('button').disabled = false;
    $('fleet-servers').replaceChildren(
      ...(servers.length
        ? servers.map((s) =>
            h(
              'tr',
              { dataset: { server: s.id } },
              h('td', { class: 'mono' }, s.id),
              h('td', { class: 'mono' }, s.url),
              h('td', {}, s.region || '–'),
              h('td', {}, pill(s.status)),
              h('td', { title: s.last_seen || '' }, fmtAgo(s.last_seen)),
              h('td', { class: 'num' }, s.latency_ms === null || s.latency_ms === undefined ? '–' : `${s.latency_ms} ms`),
              h('td', { class: 'mono' }, s.last_error || ''),
            ),
          )
        : [emptyRow(7, 'no servers: add one with `ten server add`')]),
    );
    $('fleet-tenants').replaceChildren(
      ...(tenants.length
        ? tenants.map((t) =>
            h(
              'tr',
              { dataset: { tenant: t.id } },
              h('td', { class: 'mono' }, t.id),
              h('td', {}, t.domain),
              h('td', { class: 'mono' }, t.server),
              h('td', { class: 'mono' }, `${t.process}:${t.instance}`),
            ),
          )
        : [emptyRow(4, 'no tenants')]),
    );
  });
}

// ---------------------------------------------------------------- wiring

function wire() {
  window.addEventListener('hashchange', route);
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    useToken($('token-input').value);
  });
  $('token-forget').addEventListener('click', () => {
    stopAll();
    localStorage.removeItem(TOKEN_KEY);
    state.token = '';
    state.authOk = false;
    for (const p of document.querySelectorAll('.page')) p.hidden = true;
    setConn('none', 'no token');
    banner('');
    showAuth('Token forgotten. Enter an API token (create one with `ten token-gen` on the server).');
  });
  $('token-change').addEventListener('click', () => {
    const a = $('auth');
    if (a.hidden) showAuth();
    else if (state.authOk) a.hidden = true;
  });
  $('log-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    restartLogs();
  });
  for (const id of ['log-process', 'log-stream']) $(id).addEventListener('change', restartLogs);
  $('log-instance').addEventListener('change', restartLogs);
  $('log-live').addEventListener('click', () => {
    $('log-search').value = '';
    restartLogs();
  });
  $('log-search').addEventListener('search', () => {
    if (!$('log-search').value) restartLogs();
  });
  $('deploy-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submitForm(e.target, async (d, progress) => {
      progress(`deploying ${d.process}:${d.version} (waits until it is healthy)…`);
      const body = { process: d.process.trim(), version: d.version.trim() };
      if (d.weight !== '') body.weight = Number(d.weight);
      const inst = await api('POST', '/api/deploy', body);
      return `deployed ${inst.name}: ${inst.state}, weight ${inst.weight}`;
    }).then(() => state.page === 'deploys' && route());
  });
  $('route-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submitForm(e.target, async (d) => {
      const r = await api('POST', '/api/route', { process: d.process.trim(), from: d.from.trim(), to: d.to.trim() });
      return `routed: ${r.to.instance} weight ${r.to.weight}, ${r.from.instance} weight ${r.from.weight}`;
    }).then(() => state.page === 'deploys' && route());
  });
  $('reload-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const lines = e.target.querySelector('[data-role="lines"]');
    lines.replaceChildren();
    // The per-change lines and the errors, as `ten reload` prints them.
    const show = (o) =>
      lines.replaceChildren(
        ...(o.errors || []).map((t) => h('li', { class: 'bad' }, t)),
        ...(o.changes || []).map((t) => h('li', {}, t)),
      );
    submitForm(e.target, async (d, progress) => {
      const dry = d.dry_run === 'on';
      progress(dry ? 'reading the config file…' : 'reloading (answers once the changes are live)…');
      let o;
      try {
        o = await api('POST', '/api/reload', { dry_run: dry });
      } catch (err) {
        const errors = err.data && Array.isArray(err.data.errors) ? err.data.errors : null;
        if (!errors) throw err;
        show(err.data);
        const what = err.status === 400 ? 'refused, nothing changed' : 'not all applied';
        throw new ApiError(err.status, `${what}: ${errors.length} error(s)`, err.data);
      }
      show(o);
      const n = (o.changes || []).length;
      if (dry) return n ? `dry run: ${n} change(s) would apply` : 'dry run: no change';
      return n ? `reloaded: ${n} change(s) applied` : 'reloaded: no change';
    }).then(() => state.page === 'deploys' && route());
  });
  $('migrate-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submitForm(e.target, async (d) => {
      const t = await api('POST', `/api/tenants/${encodeURIComponent(d.tenant.trim())}/migrate`, { server: d.server.trim() });
      return `tenant ${t.id} now on ${t.server}`;
    }).then(() => state.page === 'fleet' && route());
  });
}

wire();
if (state.token) {
  useToken(state.token);
} else {
  // An admin_listen with `admin_loopback_trusted` lets a local browser in without a token.
  fetch('/api/instances', { cache: 'no-store' })
    .then((res) => {
      if (res.ok) {
        state.noToken = true;
        useToken('');
      } else {
        setConn('none', 'no token');
        showAuth();
      }
    })
    .catch(() => {
      setConn('none', 'no token');
      showAuth();
    });
}
