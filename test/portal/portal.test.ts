import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import WebSocket from 'ws';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * The web portal, end to end: a real server on loopback with real sandboxes,
 * driven through Debian's Chromium (headless). Screenshots of the main pages
 * land in test-output/portal/ for a person to look at.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHOTS = join(ROOT, 'test-output', 'portal');
const PORTAL_DIST = join(ROOT, 'packages', 'portal', 'dist');
const CHROMIUM = process.env.MOAT_TEST_CHROMIUM ?? '/usr/bin/chromium';
const SESSION = '/apis/moat.dev/v1/session';
const SBX = (ns: string, name = '') => `/apis/agents.x-k8s.io/v1alpha1/namespaces/${ns}/sandboxes${name ? `/${name}` : ''}`;

let server: TestServer;
let browser: Browser;
const contexts: BrowserContext[] = [];

interface NewUser {
  name: string;
  namespace: string;
  key: string;
  keyId: string;
}

async function createUser(name: string, role = 'member'): Promise<NewUser> {
  const res = await server.api('/apis/moat.dev/v1/users', { method: 'POST', json: { name, role } });
  assert.equal(res.status, 201, await res.clone().text());
  const u = (await res.json()) as { name: string; key: { key: string; id: string } };
  const who = (await (await fetch(`${server.url}/apis/moat.dev/v1/whoami`, { headers: { authorization: `Bearer ${u.key.key}` } })).json()) as {
    namespace: string;
  };
  return { name, namespace: who.namespace, key: u.key.key, keyId: u.key.id };
}

/** Sign in over HTTP as a browser would; answers the cookie header to send back and the CSRF token. */
async function signIn(key: string): Promise<{ cookie: string; csrf: string; setCookie: string }> {
  const res = await fetch(server.url + SESSION, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-moat-csrf': '1' },
    body: JSON.stringify({ apiKey: key }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  const setCookie = res.headers.get('set-cookie') ?? '';
  const body = (await res.json()) as { csrfToken: string };
  return { cookie: setCookie.split(';')[0]!, csrf: body.csrfToken, setCookie };
}

async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  contexts.push(context);
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  return page;
}

async function shot(page: Page, name: string) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signInPage(page: Page, key: string) {
  await page.goto(server.url + '/');
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
}

/** The text on the terminal's screen, one string per row. */
const screenRows = (page: Page) => page.locator('.xterm-rows > div').allTextContents();

async function waitForRow(page: Page, test: (row: string) => boolean, what: string, timeoutMs = 20_000): Promise<string[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const rows = (await screenRows(page)).map((r) => r.replace(/\u00a0/g, ' ').trimEnd());
    if (rows.some(test)) return rows;
    if (Date.now() > end) throw new Error(`terminal never showed ${what}; screen:\n${rows.filter(Boolean).join('\n')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  if (!existsSync(join(PORTAL_DIST, 'index.html'))) {
    const r = spawnSync('npm', ['run', 'build', '-w', '@moat/portal'], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(r.status, 0, 'building the portal failed');
  }
  await mkdir(SHOTS, { recursive: true });
  server = await startTestServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives each launch a fresh, temporary --user-data-dir.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  if (server) {
    // Pools first, or they refill while the server's close deletes their members.
    const pools = (await (await server.api('/apis/extensions.agents.x-k8s.io/v1alpha1/sandboxwarmpools')).json()) as {
      items: { metadata: { namespace: string; name: string } }[];
    };
    for (const p of pools.items)
      await server.api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${p.metadata.namespace}/sandboxwarmpools/${p.metadata.name}?wait=true`, {
        method: 'DELETE',
      });
    await server.close();
  }
});

describe('portal sessions (API)', () => {
  test('the portal page and its assets are served; the API, healthz, openapi and E2B routes are not shadowed', async () => {
    const page = await fetch(server.url + '/');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'self'/);
    const html = await page.text();
    const js = html.match(/src="(\/assets\/[^"]+\.js)"/)?.[1];
    assert.ok(js, html);
    const asset = await fetch(server.url + js, { headers: { 'accept-encoding': 'br, gzip' } });
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get('cache-control') ?? '', /immutable/);
    assert.equal(asset.headers.get('content-encoding'), 'br');
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
    assert.equal((await fetch(server.url + '/openapi.json')).status, 200);
    // Paths the portal does not own keep their own answers (the portal routes with the URL's hash).
    const e2b = await fetch(server.url + '/sandboxes');
    assert.equal(e2b.status, 401);
    const api = await fetch(server.url + '/apis/moat.dev/v1/whoami');
    assert.equal(api.status, 401);
    assert.match(api.headers.get('content-type') ?? '', /json/);
  });

  test('the first load stays within 300 KB of gzipped JavaScript', async () => {
    const html = await readFile(join(PORTAL_DIST, 'index.html'), 'utf8');
    const scripts = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.js)"/g)].map((m) => m[1]!);
    assert.ok(scripts.length >= 1);
    let total = 0;
    for (const f of scripts) total += gzipSync(await readFile(join(PORTAL_DIST, f)), { level: 9 }).length;
    process.stderr.write(`# portal first load: ${scripts.join(', ')}: ${(total / 1024).toFixed(1)} KiB gzipped\n`);
    assert.ok(total <= 300 * 1024, `${total} bytes`);
  });

  test('`moat config view -o json` names the portal', () => {
    const r = spawnSync(
      process.execPath,
      ['--conditions=source', '--import', 'tsx', join(ROOT, 'packages', 'cli', 'src', 'main.ts'), 'config', 'view', '-o', 'json'],
      {
        env: { ...process.env, MOAT_URL: server.url, MOAT_API_KEY: server.adminKey },
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { portalUrl: string }).portalUrl, `${server.url}/`);
  });

  test('signing in sets an HttpOnly, SameSite=Strict session cookie and needs the CSRF header', async () => {
    const noHeader = await fetch(server.url + SESSION, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ apiKey: server.adminKey }),
    });
    assert.equal(noHeader.status, 403);
    const badKey = await fetch(server.url + SESSION, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-moat-csrf': '1' },
      body: JSON.stringify({ apiKey: 'moat_000000000000_nope' }),
    });
    assert.equal(badKey.status, 401);
    assert.equal(badKey.headers.get('set-cookie'), null);
    const crossSite = await fetch(server.url + SESSION, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-moat-csrf': '1', origin: 'http://evil.example' },
      body: JSON.stringify({ apiKey: server.adminKey }),
    });
    assert.equal(crossSite.status, 403);

    const { setCookie, cookie, csrf } = await signIn(server.adminKey);
    assert.match(setCookie, /^moat_session=[A-Za-z0-9_-]{40,};/);
    assert.match(setCookie, /; HttpOnly/i);
    assert.match(setCookie, /; SameSite=Strict/i);
    assert.match(setCookie, /; Path=\//i);
    assert.doesNotMatch(setCookie, /Secure/i, 'plain HTTP: no Secure flag');
    assert.ok(csrf.length >= 24);
    const me = await fetch(server.url + SESSION, { headers: { cookie } });
    assert.equal(me.status, 200);
    const body = (await me.json()) as { user: string; role: string; csrfToken: string };
    assert.equal(body.role, 'admin');
    assert.equal(body.csrfToken, csrf);
  });

  test('cookie-authenticated changes need the session CSRF token and a same-origin Origin', async () => {
    const { cookie, csrf } = await signIn(server.adminKey);
    const agents = '/apis/moat.dev/v1/users/admin/agents';
    const post = (headers: Record<string, string>, name: string) =>
      fetch(server.url + agents, { method: 'POST', headers: { cookie, 'content-type': 'application/json', ...headers }, body: JSON.stringify({ name }) });
    assert.equal((await post({}, 'csrf-a')).status, 403, 'no token');
    assert.equal((await post({ 'x-moat-csrf': 'wrong' }, 'csrf-b')).status, 403, 'wrong token');
    assert.equal((await post({ 'x-moat-csrf': csrf, origin: 'http://evil.example' }, 'csrf-c')).status, 403, 'foreign origin');
    const ok = await post({ 'x-moat-csrf': csrf, origin: server.url }, 'csrf-ok');
    assert.equal(ok.status, 201, await ok.text());
    // Reads need no token.
    assert.equal((await fetch(server.url + agents, { headers: { cookie } })).status, 200);
    // A refused cross-site attempt is audited as a refusal... and none of the refused agents exist.
    const list = (await (await server.api(agents)).json()) as { items: { name: string }[] };
    assert.deepEqual(
      list.items.map((a) => a.name).filter((n) => n.startsWith('csrf-')),
      ['csrf-ok'],
    );
    // The terminal's WebSocket: a cookie upgrade from another origin is refused before it opens.
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${server.url.replace(/^http/, 'ws')}${SBX('default', 'nope')}/exec/ws`, { headers: { cookie, origin: 'http://evil.example' } });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => (ws.close(), resolve(101)));
      ws.on('error', () => {});
    });
    assert.equal(status, 403);
  });

  test('revoking the key ends its sessions; signing out ends the session', async () => {
    const carol = await createUser('carol');
    const s = await signIn(carol.key);
    assert.equal((await fetch(server.url + SESSION, { headers: { cookie: s.cookie } })).status, 200);
    const revoke = await server.api(`/apis/moat.dev/v1/users/carol/keys/${carol.keyId}`, { method: 'DELETE' });
    assert.equal(revoke.status, 200);
    const after = await fetch(server.url + SBX(carol.namespace), { headers: { cookie: s.cookie } });
    assert.equal(after.status, 401);
    assert.match(((await after.json()) as { message: string }).message, /session has ended/);

    const a = await signIn(server.adminKey);
    const out = await fetch(server.url + SESSION, { method: 'DELETE', headers: { cookie: a.cookie, 'x-moat-csrf': a.csrf } });
    assert.equal(out.status, 204);
    assert.match(out.headers.get('set-cookie') ?? '', /moat_session=;/);
    assert.equal((await fetch(server.url + SESSION, { headers: { cookie: a.cookie } })).status, 401);
  });
});

describe('portal in Chromium', () => {
  let alice: NewUser;
  let bob: NewUser;
  let page: Page;
  const box = 'portal-box';

  before(async () => {
    alice = await createUser('alice');
    bob = await createUser('bob');
    page = await newPage();
  });

  test('sign in', async () => {
    await page.goto(server.url + '/');
    await page.getByLabel('API key').waitFor();
    await shot(page, '01-sign-in');
    await page.getByLabel('API key').fill('moat_000000000000_wrong');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'invalid API key' }).waitFor();
    await signInPage(page, alice.key);
    // The key itself is kept nowhere the page's scripts can read.
    assert.equal(await page.evaluate(() => document.cookie), '');
    assert.equal(await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)), '{}{}');
  });

  test('create a sandbox from a template; the live list shows it', async () => {
    await page.getByLabel('Template').selectOption('base');
    await page.getByLabel('Name', { exact: true }).fill(box);
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    await page.getByRole('heading', { name: new RegExp(box) }).waitFor();
    await page.locator('.phase', { hasText: 'Running' }).first().waitFor({ timeout: 120_000 });
    // Back to the list: it updates without a reload.
    await page.getByRole('link', { name: '← Sandboxes' }).click();
    const row = page.locator(`tr[data-sandbox="${alice.namespace}/${box}"]`);
    await row.waitFor();
    await row.locator('.phase', { hasText: 'Running' }).waitFor();
    await row.locator('td', { hasText: '%' }).first().waitFor({ timeout: 15_000 }); // CPU use, from two samples
    assert.match(await row.innerText(), /runc/);
    assert.match(await row.innerText(), /alice\/default/);
    await shot(page, '02-sandboxes');
    await page.getByRole('link', { name: box }).click();
    await page.getByRole('heading', { name: 'Events' }).waitFor();
    await page.locator('figcaption', { hasText: 'Memory:' }).waitFor({ timeout: 15_000 });
    await shot(page, '03-sandbox-overview');
  });

  test('the terminal runs `echo hello` and follows resizes', async () => {
    await page.getByRole('link', { name: 'Terminal' }).click();
    await page.locator('[data-terminal-state="open"]').waitFor();
    await page.locator('.xterm').click();
    await page.keyboard.type('echo hello\n');
    await waitForRow(page, (r) => r.trim() === 'hello', '"hello" on a line of its own');
    await shot(page, '04-terminal');
    // A smaller window: the terminal is refitted and the shell told its new size.
    await page.keyboard.type('stty size\n');
    const first = (await waitForRow(page, (r) => /^\d+ \d+$/.test(r.trim()), 'a size')).filter((r) => /^\d+ \d+$/.test(r.trim()));
    await page.setViewportSize({ width: 900, height: 700 });
    await page.waitForTimeout(500);
    await page.keyboard.type('clear; stty size\n');
    const second = await waitForRow(page, (r) => /^\d+ \d+$/.test(r.trim()) && r.trim() !== first[0]!.trim(), 'a new size');
    const [rows, cols] = second
      .find((r) => /^\d+ \d+$/.test(r.trim()))!
      .trim()
      .split(' ')
      .map(Number);
    assert.ok(cols! < Number(first[0]!.trim().split(' ')[1]), `${cols} columns after shrinking`);
    assert.ok(rows! > 5);
    await page.setViewportSize({ width: 1280, height: 860 });
  });

  test('upload a file, view it, download it', async () => {
    await page.getByRole('link', { name: 'Files' }).click();
    await page.getByRole('heading', { name: 'Files' }).waitFor();
    const content = `hello from the portal ${Date.now()}\n`;
    await page.getByLabel('Upload files here').setInputFiles({ name: 'note.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
    await page.getByRole('status').filter({ hasText: 'Uploaded note.txt' }).waitFor();
    const row = page.locator('tr[data-path="/root/note.txt"]');
    await row.waitFor();
    await row.getByRole('button', { name: 'View note.txt' }).click();
    assert.equal((await page.getByLabel('Contents of /root/note.txt').innerText()).trimEnd(), content.trimEnd());
    await shot(page, '05-files');
    const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('link', { name: 'Download note.txt' }).click()]);
    assert.equal(download.suggestedFilename(), 'note.txt');
    assert.equal(await readFile((await download.path())!, 'utf8'), content);
    // And the file is really in the sandbox.
    const check = await server.api(`${SBX(alice.namespace, box)}/files/content?path=/root/note.txt`);
    assert.equal(await check.text(), content);
  });

  test('pause, resume, hibernate, wake and extend, each confirmed first', async () => {
    await page.getByRole('link', { name: 'Overview' }).click();
    const header = page.getByRole('group', { name: `Actions for ${box}` });
    const phaseOf = async () => ((await (await server.api(SBX(alice.namespace, box))).json()) as { status: { phase: string } }).status.phase;
    const act = async (button: string, question: string, phase: string) => {
      await header.getByRole('button', { name: button }).click();
      const dialog = page.getByRole('dialog');
      await dialog.getByText(question).waitFor();
      await dialog.getByRole('button', { name: button }).click();
      await page.locator('h1 .phase', { hasText: phase }).waitFor({ timeout: 30_000 });
      assert.equal(await phaseOf(), phase);
    };
    await act('Pause', 'Every process in it is frozen', 'Paused');
    await shot(page, '06-paused');
    await act('Resume', 'Its processes continue', 'Running');
    await act('Hibernate', 'its memory is freed', 'Hibernated');
    await shot(page, '06b-hibernated');
    await act('Wake', 'It is restored from disk', 'Running');
    await act('Extend 1h', 'down one hour from now', 'Running');
    const sbx = (await (await server.api(SBX(alice.namespace, box))).json()) as { spec: { shutdownTime: string } };
    assert.ok(Math.abs(Date.parse(sbx.spec.shutdownTime) - (Date.now() + 3600_000)) < 60_000, sbx.spec.shutdownTime);
  });

  test('the audit page shows an event for each step', async () => {
    await page.getByRole('link', { name: 'Audit' }).click();
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    const want = [
      'POST session',
      'POST sandboxclaims',
      'GET sandboxes/{name}/exec/ws',
      'PUT sandboxes/{name}/files/content',
      'POST sandboxes/{name}/pause',
      'POST sandboxes/{name}/resume',
      'POST sandboxes/{name}/hibernate',
      'POST sandboxes/{name}/wake',
      'POST sandboxes/{name}/extend',
    ];
    for (const action of want) await page.locator(`tr[data-action="${action}"]`).first().waitFor({ timeout: 15_000 });
    // Filter to the sandbox: the sign-in (which names no sandbox) drops out.
    await page.getByLabel('Sandbox').fill(box);
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.locator('tr[data-action="POST session"]').first().waitFor({ state: 'detached' });
    await page.locator(`tr[data-action="PUT sandboxes/{name}/files/content"]`).first().waitFor();
    await page.getByLabel('Search').fill('exec/ws');
    assert.ok((await page.locator('tbody tr').count()) >= 1);
    assert.equal(await page.locator('tr[data-action="PUT sandboxes/{name}/files/content"]').count(), 0);
    await page.getByLabel('Search').fill('');
    await page.getByText('Chain verification needs an admin key.').waitFor();
    await shot(page, '07-audit-member');
  });

  test("a second user does not see the first user's sandbox", async () => {
    const other = await newPage();
    await signInPage(other, bob.key);
    await other.getByRole('heading', { name: 'Create a sandbox' }).waitFor();
    await other.waitForTimeout(2500); // a poll or two
    assert.equal(await other.locator(`tr[data-sandbox="${alice.namespace}/${box}"]`).count(), 0);
    assert.equal(await other.getByRole('link', { name: box }).count(), 0);
    await other.goto(`${server.url}/#/sandboxes/${alice.namespace}/${box}`);
    await other
      .getByRole('alert')
      .filter({ hasText: `namespace "${alice.namespace}" not found` })
      .waitFor();
    await other.goto(`${server.url}/#/audit`);
    await other.getByRole('heading', { name: 'Audit log' }).waitFor();
    await other.waitForTimeout(1000);
    // Bob sees his own refused attempts on it, and nothing alice did.
    const rows = await other.locator(`tr[data-sandbox="${box}"]`).allInnerTexts();
    assert.ok(rows.length > 0);
    for (const r of rows) assert.match(r, /^\d+\s.*\bbob\b.*\bdenied\b/s);
    assert.equal(await other.locator('tr[data-action="POST sandboxclaims"]').count(), 0);
    // Nor the admin pages.
    assert.equal(await other.getByRole('link', { name: 'Admin' }).count(), 0);
    await shot(other, '08-second-user');
  });

  test('an admin sees everything: all sandboxes, chain verification, admin pages; a new key is shown once', async () => {
    const admin = await newPage();
    await signInPage(admin, server.adminKey);
    await admin.locator(`tr[data-sandbox="${alice.namespace}/${box}"]`).waitFor();
    await admin.getByRole('link', { name: 'Audit' }).click();
    await admin.locator('[data-verify="true"]').waitFor();
    await shot(admin, '09-audit-admin');
    await admin.getByRole('link', { name: 'Admin' }).click();
    await admin.getByRole('heading', { name: 'Host capacity' }).waitFor();
    await admin.getByText(/cores, load/).waitFor();
    await admin.getByRole('button', { name: 'alice' }).click();
    await admin.getByRole('heading', { name: 'User alice' }).waitFor();
    await admin.getByLabel('Key name').fill('from the portal');
    await admin.getByRole('button', { name: 'Create key' }).click();
    const key = await admin.locator('[data-new-key]').innerText();
    assert.match(key, /^moat_[0-9a-f]{12}_/);
    // Quotas: the agent's, through its own form.
    await admin.getByRole('button', { name: 'Edit the quota of agent default' }).click();
    const quotaForm = admin.getByRole('form', { name: 'Save quota of default' });
    await quotaForm.getByLabel('Max sandboxes').fill('5');
    await quotaForm.getByLabel('Memory').fill('4Gi');
    await quotaForm.getByRole('button', { name: 'Save quota of default' }).click();
    await quotaForm.waitFor({ state: 'detached' });
    const agent = (await (await server.api('/apis/moat.dev/v1/users/alice/agents/default')).json()) as { quota: Record<string, unknown> };
    assert.deepEqual(agent.quota, { sandboxes: 5, memory: '4Gi' });
    await shot(admin, '10-admin');
    // It works, and it is not shown again.
    assert.equal((await fetch(`${server.url}/apis/moat.dev/v1/whoami`, { headers: { authorization: `Bearer ${key}` } })).status, 200);
    await admin.getByRole('button', { name: 'Done' }).click();
    assert.equal(await admin.locator('[data-new-key]').count(), 0);
    assert.equal((await admin.content()).includes(key), false);
  });

  test('templates and pools: YAML with validation errors shown inline', async () => {
    await page.getByRole('link', { name: 'Templates & pools' }).click();
    await page.getByRole('heading', { name: 'Templates' }).waitFor();
    await page.getByRole('heading', { name: 'Warm pools' }).waitFor();
    await shot(page, '11-templates');
    await page.getByRole('button', { name: 'New template' }).click();
    const yaml = page.getByLabel('YAML');
    // A YAML syntax error, with its line.
    await yaml.fill('apiVersion: extensions.agents.x-k8s.io/v1alpha1\nkind: SandboxTemplate\nmetadata: {name: t1\nspec: x\n');
    await page.getByRole('button', { name: 'Save' }).click();
    await page
      .getByRole('alert')
      .filter({ hasText: /Line \d+/ })
      .waitFor();
    assert.equal(await yaml.getAttribute('aria-invalid'), 'true');
    // The server's own refusal, word for word.
    const bad = `apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata:
  name: t1
spec:
  podTemplate:
    spec:
      runtimeClassName: warp-drive
      containers:
        - name: sandbox
          image: base
`;
    await yaml.fill(bad);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('alert').filter({ hasText: 'warp-drive' }).waitFor();
    await shot(page, '12-template-error');
    await yaml.fill(bad.replace('warp-drive', 'runc'));
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('row', { name: /t1/ }).waitFor();
    // A pool of it, with its fill level.
    await page.getByRole('button', { name: 'New pool' }).click();
    await page
      .getByLabel('YAML')
      .fill(
        'apiVersion: extensions.agents.x-k8s.io/v1alpha1\nkind: SandboxWarmPool\nmetadata:\n  name: p1\nspec:\n  replicas: 1\n  sandboxTemplateRef:\n    name: t1\n',
      );
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('meter', { name: /p1: 1 of 1 ready/ }).waitFor({ timeout: 120_000 });
    await shot(page, '13-pools');
  });

  test('keyboard: the sign-in and the main navigation work without a mouse', async () => {
    const kb = await newPage();
    await kb.goto(server.url + '/');
    await kb.getByLabel('API key').waitFor();
    await kb.keyboard.type(alice.key); // the field has focus on load
    await kb.keyboard.press('Enter');
    await kb.getByRole('heading', { name: 'Sandboxes' }).waitFor();
    await kb.keyboard.press('Tab'); // skip link
    assert.equal(await kb.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    await kb.keyboard.press('Tab');
    await kb.keyboard.press('Tab');
    await kb.keyboard.press('Tab');
    assert.equal(await kb.evaluate(() => document.activeElement?.textContent), 'Templates & pools');
    await kb.keyboard.press('Enter');
    await kb.getByRole('heading', { name: 'Templates' }).waitFor();
    // Narrow screens: the page still fits its width (tables scroll inside their own box).
    await kb.setViewportSize({ width: 390, height: 800 });
    await kb.goto(server.url + '/#/sandboxes');
    await kb.getByRole('heading', { name: 'Sandboxes' }).waitFor();
    assert.ok((await kb.evaluate(() => document.documentElement.scrollWidth)) <= 400);
    await shot(kb, '14-mobile');
  });
});
