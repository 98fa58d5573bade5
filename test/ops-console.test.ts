/**
 * The ops console in a real headless browser (Debian's Chromium, driven by playwright-core with
 * the system binary: nothing is downloaded). It logs in with a read-only token and shows live
 * connections, decision rates, the latest denials and certificates near expiry from a running
 * broker; the policy explain form answers; a wrong token is refused; and a screenshot of the
 * dashboard, decoded by the browser itself, shows the data drawn (the denial bars and the
 * values), not an empty page. No script error and no CSP violation on the way.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { connect, writePolicyDir } from './helpers.ts';
import { startOpsBroker, tempDir, type OpsBroker } from './ops-support.ts';
import { pki } from './tls-fixtures.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

let b: OpsBroker;
let policy: ReturnType<typeof writePolicyDir>;
let pkiDir: string;
let profile: string;
let browser: BrowserContext;
const clients: MqttClient[] = [];

test.before(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); the console test never downloads a browser`);
  pkiDir = tempDir('portcullis-console-pki-');
  await pki(pkiDir, 'init', '--cn', 'Console CA', '--key-type', 'ec');
  // A server certificate that runs out in 10 days: the console must list it.
  await pki(pkiDir, 'server', '--dns', 'localhost', '--days', '10');
  policy = writePolicyDir('p, *, public/#, *, allow\np, *, secret/#, *, deny\n');
  b = await startOpsBroker({
    listeners: [
      { name: 'mqtt', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'mqtts', type: 'tls', host: '127.0.0.1', port: 0, cert: path.join(pkiDir, 'server.crt'), key: path.join(pkiDir, 'private', 'server.key'), auth: ['anonymous'] },
    ],
    authorizers: [{ type: 'casbin', model: policy.model, policy: policy.policy, watch: false }],
  });
  clients.push(await connect(b.mqttPort, { clientId: 'console-a', protocolVersion: 5 }));
  clients.push(await connect(b.mqttPort, { clientId: 'console-b', protocolVersion: 4 }));
  await clients[0]!.subscribeAsync('public/#');
  await clients[1]!.subscribeAsync('secret/plans').catch(() => undefined);
  await clients[1]!.publishAsync('public/news', 'hello');
  profile = tempDir('portcullis-chromium-');
  browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1200, height: 1600 } });
});

test.after.always(async () => {
  await browser?.close();
  for (const c of clients) c.end(true);
  await b?.stop();
  policy?.cleanup();
  for (const d of [pkiDir, profile]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

/** A page that collects script errors and CSP violations. */
async function openConsole(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  await page.goto(`${b.base}/console/`);
  return { page, problems };
}

async function login(page: Page, token: string): Promise<void> {
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
}

/** Counts pixels of the screenshot, decoded by the browser: those of the colour `rgb`, and every non-background one. */
async function inkOf(page: Page, png: Buffer, rgb: [number, number, number]): Promise<{ colour: number; ink: number; total: number }> {
  const probe = await browser.newPage();
  try {
    await probe.setContent('<canvas id="c"></canvas>');
    return await probe.evaluate(
      async ({ data, rgb }) => {
        // Browser globals: this function runs in the page.
        const w = globalThis as any;
        const img = new w.Image();
        img.src = `data:image/png;base64,${data}`;
        await img.decode();
        const canvas = w.document.getElementById('c');
        canvas.width = img.width;
        canvas.height = img.height;
        const g = canvas.getContext('2d');
        g.drawImage(img, 0, 0);
        const px: Uint8ClampedArray = g.getImageData(0, 0, img.width, img.height).data;
        let colour = 0;
        let ink = 0;
        for (let i = 0; i < px.length; i += 4) {
          const [r, gr, bl] = [px[i] as number, px[i + 1] as number, px[i + 2] as number];
          if (Math.abs(r - rgb[0]) < 12 && Math.abs(gr - rgb[1]) < 12 && Math.abs(bl - rgb[2]) < 12) colour++;
          if (r + gr + bl < 600) ink++;
        }
        return { colour, ink, total: px.length / 4 };
      },
      { data: png.toString('base64'), rgb },
    );
  } finally {
    await probe.close();
    void page;
  }
}

test.serial('a wrong token is refused on the login form', async (t) => {
  const { page, problems } = await openConsole();
  await login(page, `pct_${'0'.repeat(16)}_${'A'.repeat(43)}`);
  await page.waitForFunction(() => ((globalThis as any).document.getElementById('login-error')?.textContent ?? '') !== '');
  t.regex((await page.textContent('#login-error')) ?? '', /Login refused: invalid bearer token/);
  t.true(await page.isHidden('#dashboard'));
  // The failed whoami is the only error the browser reports (a 401 from fetch).
  t.true(problems.every((p) => /401/.test(p)), problems.join('\n'));
  await page.close();
});

test.serial('logged in with a read-only token, the console shows live connections, decision rates, the latest denials and certificates near expiry, and explains a decision', async (t) => {
  const { page, problems } = await openConsole();
  const before = await page.screenshot({ fullPage: true });
  await login(page, b.tokens.reader);
  await page.waitForSelector('body[data-loaded="true"]');
  // A second poll, so that rates have a previous sample to be computed from.
  await clients[1]!.subscribeAsync('secret/other').catch(() => undefined);
  await page.waitForFunction(() => (globalThis as any).document.querySelector('#rates tr[data-decision="subscribe"] td:nth-child(2)')?.textContent !== '–', undefined, { timeout: 12_000 });

  t.is(await page.textContent('#who'), 'ops-reader (read-only, token)');
  t.is(await page.textContent('#connections'), '2');
  t.is(await page.textContent('#audit-state'), 'healthy');
  const clientsText = (await page.textContent('#clients tbody')) ?? '';
  t.regex(clientsText, /console-a/);
  t.regex(clientsText, /console-b/);
  t.regex(clientsText, /5\.0/);
  t.regex(clientsText, /3\.1\.1/);
  const denied = await page.textContent('#rates tr[data-decision="subscribe"] td:nth-child(4)');
  t.true(Number(denied) >= 2, `subscribe denials in total: ${denied}`);
  const denials = (await page.textContent('#denials tbody')) ?? '';
  t.regex(denials, /subscribe/);
  t.regex(denials, /secret\/plans/);
  t.regex(denials, /console-b/);
  t.regex(denials, /0x80|0x87/);
  const certs = (await page.textContent('#certificates tbody')) ?? '';
  t.regex(certs, /server/);
  t.regex(certs, /mqtts/);
  t.regex(certs, /\b(9|10)(\.\d)?\b/, 'days left on the 10-day server certificate');

  await page.fill('#explain-form input[name=user]', 'someone');
  await page.selectOption('#explain-form select[name=action]', 'subscribe');
  await page.fill('#explain-form input[name=topic]', 'secret/plans');
  await page.click('#explain-form button[type=submit]');
  await page.waitForFunction(() => ((globalThis as any).document.getElementById('explain-result')?.textContent ?? '') !== '');
  const explained = (await page.textContent('#explain-result')) ?? '';
  t.regex(explained, /^DENY \(casbin\)/);
  t.regex(explained, /policy\.csv:2/);

  // The screenshot check: the dashboard drawn with data. Denial bars (#b3261e) and the values
  // (#1f5fbf) only exist once data has arrived; the login page has neither.
  const after = await page.locator('#dashboard').screenshot();
  const shotDir = tempDir('portcullis-console-shot-');
  fs.writeFileSync(path.join(shotDir, 'dashboard.png'), after);
  const red = await inkOf(page, after, [0xb3, 0x26, 0x1e]);
  const blue = await inkOf(page, after, [0x1f, 0x5f, 0xbf]);
  const empty = await inkOf(page, before, [0xb3, 0x26, 0x1e]);
  t.true(red.colour > 200, `denial bars drawn: ${red.colour} red pixels`);
  t.true(blue.colour > 200, `values drawn: ${blue.colour} blue pixels`);
  t.true(red.ink / red.total > 0.02, `text and tables drawn: ${red.ink} of ${red.total} pixels`);
  t.is(empty.colour, 0, 'the login page has no denial bars');
  if (process.env.PORTCULLIS_KEEP_SCREENSHOT !== undefined) fs.copyFileSync(path.join(shotDir, 'dashboard.png'), process.env.PORTCULLIS_KEEP_SCREENSHOT);
  fs.rmSync(shotDir, { recursive: true, force: true });

  t.deepEqual(problems, [], 'no script error, no CSP violation');
  await page.click('#logout');
  t.true(await page.isVisible('#login'));
  await page.close();
});

