// The dashboard in headless Chromium against a real `ten serve` (started by tests/e2e/dashboard.rs).
//
//   node tests/browser/dashboard.test.mjs ADMIN_URL TOKEN SCREENSHOT_DIR PROXY_ADDR DOMAIN
//
// ADMIN_URL: the admin_listen base URL (http://127.0.0.1:PORT); TOKEN: a valid API token;
// PROXY_ADDR: the proxy listener (127.0.0.1:PORT) and DOMAIN its domain, to make an instance
// write a log line. The server runs process "web" with instances "a" and "b".
// Prints one line per check and a closing "dashboard: N passed, N failed"; exits 0 when all
// passed. Every wait is bounded; the whole run stops itself after 100 s.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { chromium } from 'playwright-core';

const [adminUrl, token, shotDir, proxyAddr, domain] = process.argv.slice(2);
if (!adminUrl || !token || !shotDir || !proxyAddr || !domain) {
  console.error('usage: dashboard.test.mjs ADMIN_URL TOKEN SCREENSHOT_DIR PROXY_ADDR DOMAIN');
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });

const WAIT = 20_000;
const results = [];
const consoleErrors = [];
let phase = 'start';

const hardStop = setTimeout(() => {
  console.error('dashboard test: still running after 100 s, giving up');
  process.exit(1);
}, 100_000);

function check(name, ok, detail = '') {
  results.push({ name, ok });
  console.log(`${ok ? 'ok' : 'FAILED'}: ${name}${detail ? ` (${detail})` : ''}`);
  if (!ok) throw new Error(`check failed: ${name}${detail ? `: ${detail}` : ''}`);
}

// A GET through ten's proxy with the given Host (node's http sets Host as given).
function proxyGet(host, path) {
  const [hostname, port] = proxyAddr.split(':');
  return new Promise((resolve, reject) => {
    const req = http.get({ hostname, port: Number(port), path, headers: { Host: host }, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${host}${path} timed out`)));
    req.on('error', reject);
  });
}

// Failed loads the page makes on purpose: the wrong token's 401, and the fleet routes' 404 or
// 409 while fleet routing is off (the Fleet page shows that message). Anything else fails.
function expected(err) {
  const text = `${err.text} ${err.url}`;
  if (err.phase === 'wrong-token' && /status of 401/.test(text)) return true;
  if (err.phase === 'fleet' && /status of (404|409)/.test(text) && /\/api\/(servers|tenants)/.test(text)) return true;
  return false;
}

async function shot(page, name) {
  const path = join(shotDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

async function go(page, name) {
  phase = name;
  await page.click(`#nav a[data-page="${name}"]`);
  await page.waitForSelector(`#page-${name}:not([hidden])`, { timeout: WAIT });
}

async function instanceRow(page, name) {
  return page.evaluate((n) => {
    const tr = document.querySelector(`#inst-rows tr[data-name="${n}"]`);
    if (!tr) return null;
    const cell = (f) => tr.querySelector(`[data-field="${f}"]`);
    return {
      state: tr.dataset.state,
      uptime: Number(cell('uptime').dataset.secs || -1),
      restarts: Number(cell('restarts').textContent),
    };
  }, name);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'ten-dashboard-chromium-'));
let context;
let failed = null;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 860 },
    timeout: 30_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push({ phase, text: m.text(), url: m.location().url || '' });
  });
  page.on('pageerror', (e) => consoleErrors.push({ phase, text: `page error: ${e.message}`, url: '' }));
  // Nothing but the server itself may be asked for anything.
  const origin = new URL(adminUrl).origin;
  const foreign = [];
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith('data:')) foreign.push(u);
  });

  // 1. A wrong token: the 401 message, and the token form stays.
  phase = 'wrong-token';
  const resp = await page.goto(`${adminUrl}/`, { waitUntil: 'load' });
  check('the page loads with its CSP', resp.status() === 200 && /script-src 'self'/.test(resp.headers()['content-security-policy'] || ''));
  await page.waitForSelector('#auth:not([hidden])');
  await page.fill('#token-input', `ten_${'0'.repeat(64)}`);
  await page.click('#token-form button[type="submit"]');
  await page.waitForFunction(() => /token rejected/.test(document.getElementById('banner').textContent));
  const bannerText = await page.textContent('#banner');
  check('a wrong token shows the 401 message', /token rejected: create one with `ten token-gen` on the server/.test(bannerText), bannerText.trim());
  check('the token form stays for another try', await page.isVisible('#token-input'));
  await shot(page, 'token-rejected');

  // 2. The right token: the instance list with both instances.
  phase = 'login';
  await page.fill('#token-input', token);
  await page.click('#token-form button[type="submit"]');
  await page.waitForSelector('#page-overview:not([hidden])');
  check('the right token opens the dashboard', (await page.textContent('#conn')).includes('connected'));
  check('the token is kept in the browser', (await page.evaluate(() => localStorage.getItem('tenement.token'))) === token);

  // 3. Overview: counts, and a live chart once traffic flows between two scrapes.
  phase = 'overview';
  await page.waitForFunction(() => document.getElementById('ov-healthy').textContent === '2');
  const traffic = (async () => {
    for (let i = 0; i < 60; i++) {
      await proxyGet(`web.${domain}`, '/').catch(() => {});
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await page.waitForFunction(
    () => {
      const c = document.querySelector('.chart[data-process="web"]');
      return c && c.querySelector('path.rps') && /[1-9]/.test(c.querySelector('.chart-title .muted').textContent.split('req/s')[0]);
    },
    null,
    { timeout: 30_000 },
  );
  await traffic;
  const title = await page.textContent('.chart[data-process="web"] .chart-title');
  check('overview charts requests/s and p99 of process web', /req\/s · p99 /.test(title), title);
  check('overview counts 2 healthy, 0 not healthy', (await page.textContent('#ov-unhealthy')) === '0');
  await page.waitForSelector('#ov-events tr td.mono');
  check('overview lists recent ten events', (await page.$$('#ov-events tr')).length > 0);
  await shot(page, 'overview');

  // 4. Instances: both listed; restart one through the confirmation dialog, its uptime resets.
  await go(page, 'instances');
  await page.waitForSelector('#inst-rows tr[data-name="web:a"]');
  await page.waitForSelector('#inst-rows tr[data-name="web:b"]');
  const names = await page.$$eval('#inst-rows tr[data-name]', (trs) => trs.map((t) => t.dataset.name));
  check('the instance list shows web:a and web:b', names.includes('web:a') && names.includes('web:b'), names.join(', '));
  await page.waitForFunction(() => {
    const c = document.querySelector('#inst-rows tr[data-name="web:a"] [data-field="uptime"]');
    return c && Number(c.dataset.secs) >= 3;
  }, null, { timeout: 30_000 });
  const before = await instanceRow(page, 'web:a');
  await shot(page, 'instances');
  await page.click('#inst-rows tr[data-name="web:a"] button[data-action="restart"]');
  await page.waitForSelector('dialog#confirm[open]');
  check('restart asks for confirmation in a dialog', (await page.textContent('#confirm-title')).includes('Restart web:a'));
  await shot(page, 'instances-confirm');
  await page.click('#confirm-ok');
  await page.waitForFunction(
    (b) => {
      const tr = document.querySelector('#inst-rows tr[data-name="web:a"]');
      if (!tr || tr.dataset.state !== 'healthy') return false;
      const secs = Number(tr.querySelector('[data-field="uptime"]').dataset.secs);
      const restarts = Number(tr.querySelector('[data-field="restarts"]').textContent);
      return secs < b.uptime && restarts > b.restarts;
    },
    before,
    { timeout: 30_000 },
  );
  const after = await instanceRow(page, 'web:a');
  check('restart resets the uptime and counts the restart', after.uptime < before.uptime && after.restarts === before.restarts + 1,
    `uptime ${before.uptime}s -> ${after.uptime}s, restarts ${before.restarts} -> ${after.restarts}`);

  // 5. Logs: a new line arrives live over SSE; full-text search finds it.
  await go(page, 'logs');
  await page.waitForFunction(() => document.getElementById('log-mode').textContent === 'live');
  const marker = 'noise 1 from web:b';
  const hasMarker = () =>
    page.evaluate((m) => [...document.querySelectorAll('#log-lines .log-line .msg')].some((e) => e.textContent === m), marker);
  check('the log line is not there before it is written', !(await hasMarker()));
  const noise = await proxyGet(`b.web.${domain}`, '/noise?lines=1');
  check('web:b wrote a line', noise.status === 200, `${noise.status} ${noise.body.trim()}`);
  await page.waitForFunction(
    (m) => [...document.querySelectorAll('#log-lines .log-line .msg')].some((e) => e.textContent === m),
    marker,
    { timeout: 15_000 },
  );
  check('the new log line arrives live', await hasMarker());
  await shot(page, 'logs');
  await page.fill('#log-search', 'noise');
  await page.click('#log-filters button[type="submit"]');
  await page.waitForFunction(() => document.getElementById('log-mode').textContent.startsWith('search: '));
  check('full-text search finds the line', await hasMarker(), await page.textContent('#log-mode'));
  await page.click('#log-live');
  await page.waitForFunction(() => document.getElementById('log-mode').textContent === 'live');

  // 6. Deploys: deploy from the page, see it in the history.
  await go(page, 'deploys');
  await page.fill('#deploy-form input[name="process"]', 'web');
  await page.fill('#deploy-form input[name="version"]', 'v2');
  await page.fill('#deploy-form input[name="weight"]', '0');
  await page.click('#deploy-form button[type="submit"]');
  await page.waitForFunction(() => /^(deployed|failed)/.test(document.querySelector('#deploy-form .result').textContent), null, {
    timeout: 30_000,
  });
  const deployed = await page.textContent('#deploy-form .result');
  check('deploy from the page', deployed.startsWith('deployed web:v2'), deployed);
  await page.waitForFunction(() => [...document.querySelectorAll('#deploy-rows td')].some((td) => td.textContent === 'deploy'));
  check('the deploy is in the history', true);
  await shot(page, 'deploys');

  // 7. Fleet: servers and tenants, or the message that fleet routing is off.
  await go(page, 'fleet');
  await page.waitForFunction(
    () => !document.getElementById('fleet-off').hidden || document.querySelector('#fleet-servers tr'),
  );
  const fleetOff = await page.isVisible('#fleet-off');
  check('the fleet page answers', true, fleetOff ? (await page.textContent('#fleet-off')).trim() : 'fleet on');
  await shot(page, 'fleet');

  // 8. Back to the overview (every page visited), then the console.
  await go(page, 'overview');
  await page.waitForFunction(() => document.querySelectorAll('.chart[data-process="web"] path.rps').length > 0);
  await page.waitForTimeout(3500); // one more scrape: the charts keep their history across pages
  await shot(page, 'overview-after');
  check('no request leaves the server', foreign.length === 0, foreign.join(' '));
  const unexpected = consoleErrors.filter((e) => !expected(e));
  check('no console errors on any page', unexpected.length === 0, unexpected.map((e) => `[${e.phase}] ${e.text} ${e.url}`).join(' | '));
} catch (e) {
  failed = e;
  console.log(`FAILED: ${e.message.split('\n')[0]}`);
  if (consoleErrors.length) console.log(`console errors: ${JSON.stringify(consoleErrors)}`);
  try {
    const page = context && context.pages()[0];
    if (page) await shot(page, 'failure');
  } catch {
    /* no screenshot then */
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(hardStop);
}

const passed = results.filter((r) => r.ok).length;
const failures = results.length - passed + (failed && results.every((r) => r.ok) ? 1 : 0);
console.log(`dashboard: ${passed} passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
