// Drive the SMART test app (tests/e2e/app) in headless Chromium with playwright-core.
//
// Input: E2E_BROWSER_PLAN, one JSON document:
//   { "appDir": ".../tests/e2e/app", "bundle": ".../fhirclient/build/fhir-client.js",
//     "executablePath": "/usr/bin/chromium", "ports": [4101, 4102],
//     "timeoutMs": 30000,
//     "scenarios": [ { "name": "standalone", "url": "http://127.0.0.1:4101/launch.html?...",
//                      "screenshot": ".../test-artifacts/standalone.png" } ] }
// The app page is served by a tiny static server of this process on each port (each port is
// its own origin: the tests allow one at the gateway and not the other). Every scenario runs
// in a new browser context (no cookies or storage shared) of one Chromium, which Playwright
// starts with a fresh temporary user data dir. Output (stdout): one JSON document
//   { "scenarios": { "<name>": { "result": window.__smartResult, "console": [...],
//                                "requests": [{method, url, status|failure}] } } }

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import process from 'node:process';

import { chromium } from 'playwright-core';

const plan = JSON.parse(process.env.E2E_BROWSER_PLAN || '{}');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

function serve(port) {
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://app.invalid');
    const name = pathname === '/' ? 'index.html' : pathname.slice(1);
    const file = name === 'fhir-client.js' ? plan.bundle : path.join(plan.appDir, name);
    if (name.includes('/') || name.startsWith('.') || !fs.existsSync(file)) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, {
      'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
      'Cache-Control': 'no-store',
    });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

async function runScenario(browser, scenario) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const page = await context.newPage();
  const consoleLines = [];
  const requests = [];
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`));
  page.on('requestfinished', async (req) => {
    const res = await req.response();
    requests.push({ method: req.method(), url: req.url(), status: res ? res.status() : null });
  });
  page.on('requestfailed', (req) =>
    requests.push({ method: req.method(), url: req.url(), failure: req.failure()?.errorText }),
  );
  let result = null;
  let error = null;
  try {
    await page.goto(scenario.url);
    await page.waitForFunction(() => window.__smartDone === true, null, {
      timeout: plan.timeoutMs || 30000,
    });
    result = await page.evaluate(() => window.__smartResult);
  } catch (err) {
    error = String(err && err.message ? err.message : err);
  }
  if (scenario.screenshot) {
    fs.mkdirSync(path.dirname(scenario.screenshot), { recursive: true });
    await page.screenshot({ path: scenario.screenshot, fullPage: true }).catch(() => {});
  }
  const url = page.url();
  await context.close();
  return { result, error, console: consoleLines, requests, finalUrl: url };
}

const servers = await Promise.all(plan.ports.map(serve));
const browser = await chromium.launch({
  executablePath: plan.executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--no-first-run',
    '--disable-component-update',
    '--disable-sync',
    '--disable-quic',
  ],
});
const out = { scenarios: {} };
try {
  for (const scenario of plan.scenarios) {
    const started = Date.now();
    out.scenarios[scenario.name] = await runScenario(browser, scenario);
    out.scenarios[scenario.name].ms = Date.now() - started;
  }
} finally {
  await browser.close();
  for (const server of servers) server.close();
}
process.stdout.write(JSON.stringify(out));
