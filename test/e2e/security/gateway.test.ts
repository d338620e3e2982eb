import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Moat } from '@moat/sdk';
import { NS, sandboxBody, sh, startTestServer, type TestServer } from '../../helpers/server.js';

const NSV1 = '/apis/moat.dev/v1/namespaces/default';
const KEYS = {
  openai: `sk-real-${randomBytes(16).toString('hex')}`,
  anthropic: `sk-ant-${randomBytes(16).toString('hex')}`,
  github: `ghp_${randomBytes(16).toString('hex')}`,
};

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A provider on loopback that records every request and answers as `answer` says. */
async function upstream(answer: (req: Seen, res: ServerResponse) => void | Promise<void>) {
  const seen: Seen[] = [];
  const server: Server = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const s = { method: req.method!, url: req.url!, headers: req.headers, body };
    seen.push(s);
    await answer(s, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};

describe('API gateway: credentials stay outside the sandbox', () => {
  let server: TestServer;
  let release: () => void = () => {};
  const releaseSecond = new Promise<void>((r) => (release = r));

  const openai = upstream(async (req, res) => {
    if (req.url === '/v1/models') return json(res, 200, { object: 'list', data: [{ id: 'gpt-test' }, { id: 'gpt-forbidden' }] });
    if (req.url === '/v1/embeddings') return json(res, 200, { data: [{ embedding: [0.1] }], usage: { prompt_tokens: 3, total_tokens: 3 } });
    const body = JSON.parse(req.body) as { model: string; stream?: boolean };
    if (body.model === 'echo-key')
      return json(
        res,
        401,
        { error: { message: `Incorrect API key provided: ${req.headers.authorization}` } },
        { 'x-echo': String(req.headers.authorization) },
      );
    if (!body.stream)
      return json(res, 200, { id: 'c1', choices: [{ message: { role: 'assistant', content: 'hello' } }], usage: { prompt_tokens: 11, completion_tokens: 7 } });
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: 'first' } }] })}\n\n`);
    await releaseSecond; // the second event waits until the sandbox has shown the first: no buffering on the way
    res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: 'second' } }] })}\n\n`);
    res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 2 } })}\n\ndata: [DONE]\n\n`);
    res.end();
  });
  const anthropic = upstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { usage: { input_tokens: 20, output_tokens: 1 } } })}\n\n`);
    res.write(`event: content_block_delta\ndata: ${JSON.stringify({ type: 'content_block_delta', delta: { text: 'hi' } })}\n\n`);
    res.end(`event: message_delta\ndata: ${JSON.stringify({ type: 'message_delta', usage: { output_tokens: 9 } })}\n\n`);
  });
  // A "reflecting" API: it echoes the request's headers back, as httpbin does.
  const github = upstream((req, res) => json(res, 200, { path: req.url, headers: req.headers }, { 'x-seen-auth': String(req.headers.authorization) }));

  const config = async () => ({
    openai: { baseUrl: `http://openai.test:${(await openai).port}`, secret: 'openai' },
    anthropic: { baseUrl: `http://anthropic.test:${(await anthropic).port}`, secret: 'anthropic' },
    models: ['gpt-test', 'echo-key', 'text-embedding-*', 'claude-*'],
    credentials: [{ name: 'github', baseUrl: `http://github.test:${(await github).port}/api`, headers: { Authorization: 'Bearer {{secret:github}}' } }],
  });

  const agentBody = (name: string) => {
    const body = sandboxBody(name) as { spec: Record<string, unknown> };
    body.spec.secrets = [{ name: 'openai' }, { name: 'anthropic' }, { name: 'github' }];
    return body;
  };

  before(async () => {
    server = await startTestServer({ network: { pinnedHosts: { 'openai.test': '127.0.0.1', 'anthropic.test': '127.0.0.1', 'github.test': '127.0.0.1' } } });
    for (const [name, value] of Object.entries(KEYS))
      assert.equal((await server.api(`${NSV1}/secrets`, { method: 'POST', json: { name, value } })).status, 201);
    assert.equal((await server.api(`${NSV1}/gateway`, { method: 'PUT', json: await config() })).status, 200);
    for (const name of ['agent', 'other']) {
      assert.equal((await server.api(NS, { method: 'POST', json: agentBody(name) })).status, 201);
      assert.equal((await server.api(`${NS}/${name}/wait?timeoutSeconds=120`)).status, 200);
    }
  });
  after(async () => {
    release();
    await server.close();
    for (const u of [openai, anthropic, github]) await (await u).close();
  });

  const curl = (args: string) => sh(server, 'agent', `curl -sS -w '\\n%{http_code}' ${args}`);
  const chat = (model: string, extra = '') =>
    curl(
      `-H "Authorization: Bearer $MOAT_SANDBOX_TOKEN" -H 'content-type: application/json' -d '{"model":"${model}","messages":[{"role":"user","content":"hi"}]${extra}}' "$OPENAI_BASE_URL/chat/completions"`,
    );
  const leaks = (text: string) => Object.values(KEYS).filter((k) => text.includes(k));

  test('OpenAI-compatible calls: the upstream sees the real key, the sandbox only its token', async () => {
    const r = await chat('gpt-test');
    assert.match(r.stdout, /"content":"hello"[\s\S]*\n200$/, r.stderr);
    const got = (await openai).seen.at(-1)!;
    assert.equal(got.url, '/v1/chat/completions');
    assert.equal(got.headers.authorization, `Bearer ${KEYS.openai}`);
    assert.ok(!JSON.stringify(got.headers).includes('moat_sbx_'), 'the sandbox token never goes upstream');

    const models = await curl('-H "Authorization: Bearer $OPENAI_API_KEY" "$OPENAI_BASE_URL/models"');
    assert.match(models.stdout, /gpt-test[\s\S]*\n200$/);
    assert.doesNotMatch(models.stdout, /gpt-forbidden/, 'the list shows only models the allow-list permits');
    assert.match((await curl('-H "Authorization: Bearer $OPENAI_API_KEY" "$OPENAI_BASE_URL/models/gpt-forbidden"')).stdout, /not allowed[\s\S]*\n403$/);
    const emb = await curl(
      `-H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"model":"text-embedding-3-small","input":"x"}' "$OPENAI_BASE_URL/embeddings"`,
    );
    assert.match(emb.stdout, /\n200$/);
    assert.deepEqual((await openai).seen.map((s) => s.url).slice(-2), ['/v1/models', '/v1/embeddings']);
  });

  test('Anthropic-compatible /v1/messages streams through with x-api-key swapped in; usage is recorded per sandbox and model', async () => {
    const r = await curl(
      `-N -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d '{"model":"claude-test","max_tokens":5,"stream":true,"messages":[]}' "$ANTHROPIC_BASE_URL/v1/messages"`,
    );
    assert.match(r.stdout, /message_start[\s\S]*message_delta[\s\S]*\n200$/);
    const got = (await anthropic).seen.at(-1)!;
    assert.equal(got.headers['x-api-key'], KEYS.anthropic);
    assert.equal(got.headers['anthropic-version'], '2023-06-01');
    assert.ok(!('stream_options' in JSON.parse(got.body)), 'Anthropic bodies go as sent');

    const usage = (await (await server.api(`${NSV1}/gateway/usage`)).json()) as {
      items: { sandbox: string; model: string; requests: number; inputTokens: number; outputTokens: number; user: string; agent: string }[];
    };
    const claude = usage.items.find((u) => u.model === 'claude-test')!;
    assert.deepEqual({ ...claude }, { ...claude, sandbox: 'agent', requests: 1, inputTokens: 20, outputTokens: 9, user: 'admin', agent: 'default' });
    assert.equal(usage.items.find((u) => u.model === 'gpt-test')?.inputTokens, 11);
    const moat = new Moat({ url: server.url, apiKey: server.adminKey });
    assert.deepEqual(await moat.gateway.usage(), usage.items, 'the SDK reads the same');
    assert.deepEqual((await moat.gateway.get()).models, (await config()).models);
  });

  // A buffering gateway would hold the first event until the second came, which waits for the first: the timeout fails it.
  test('SSE passes through unbuffered: the sandbox sees the first event before the upstream sends the second', { timeout: 30_000 }, async () => {
    const res = await server.api(`${NS}/agent/exec`, {
      method: 'POST',
      json: {
        command: [
          'sh',
          '-c',
          `curl -sN -H "Authorization: Bearer $MOAT_SANDBOX_TOKEN" -H 'content-type: application/json' -d '{"model":"gpt-test","stream":true,"messages":[]}' "$OPENAI_BASE_URL/chat/completions"`,
        ],
      },
    });
    let out = '';
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) {
      for (const line of decoder.decode(chunk, { stream: true }).split('\n').filter(Boolean)) {
        const m = JSON.parse(line) as { type: string; data?: string };
        if (m.type === 'stdout') out += Buffer.from(m.data!, 'base64').toString();
      }
      if (out.includes('first') && !out.includes('second')) release();
    }
    assert.match(out, /first[\s\S]*second[\s\S]*\[DONE\]/);
    const sent = JSON.parse((await openai).seen.at(-1)!.body) as { stream_options?: unknown };
    assert.deepEqual(sent.stream_options, { include_usage: true }, 'a streamed chat completion is asked for its usage');
  });

  test('credential injection: /proxy/github reaches the API with the key; echoes of it come back redacted', async () => {
    const r = await curl(`-D - -H "Authorization: Bearer $MOAT_SANDBOX_TOKEN" "$MOAT_GATEWAY_URL/proxy/github/user/repos?per_page=1"`);
    assert.match(r.stdout, /\n200$/);
    const got = (await github).seen.at(-1)!;
    assert.equal(got.url, '/api/user/repos?per_page=1');
    assert.equal(got.headers.authorization, `Bearer ${KEYS.github}`);
    assert.deepEqual(leaks(r.stdout + r.stderr), []);
    assert.match(r.stdout, /x-seen-auth: Bearer \[redacted by moat\]/i);
    assert.match(r.stdout, /"authorization":"Bearer \[redacted by moat\]"/);

    const unknown = await curl(`-H "Authorization: Bearer $MOAT_SANDBOX_TOKEN" "$MOAT_GATEWAY_URL/proxy/gitlab/x"`);
    assert.match(unknown.stdout, /no credential rule \\"gitlab\\"[\s\S]*\n404$/);
  });

  test('the key never reaches the sandbox: environment, files, error answers', async () => {
    const echoed = await chat('echo-key');
    assert.match(echoed.stdout, /Incorrect API key provided: Bearer \[redacted by moat\][\s\S]*\n401$/);
    const look = await sh(
      server,
      'agent',
      `env; cat /proc/1/environ; grep -rsl -e ${KEYS.openai.slice(0, 12)} -e ${KEYS.github.slice(0, 8)} /etc /tmp /root /run /var /home /data || echo clean`,
    );
    assert.deepEqual(leaks(look.stdout + look.stderr), []);
    assert.match(look.stdout, /MOAT_SANDBOX_TOKEN=moat_sbx_/);
    assert.match(look.stdout, /clean\n$/);
  });

  test("the token is bound to its sandbox: none, another sandbox's, or from elsewhere are refused", async () => {
    assert.match((await curl('"$OPENAI_BASE_URL/models"')).stdout, /missing sandbox token[\s\S]*\n401$/);
    const otherToken = (await sh(server, 'other', 'printf %s "$MOAT_SANDBOX_TOKEN"')).stdout;
    assert.match(otherToken, /^moat_sbx_/);
    assert.match((await curl(`-H "Authorization: Bearer ${otherToken}" "$OPENAI_BASE_URL/models"`)).stdout, /valid only from its own address[\s\S]*\n403$/);
    const forged = otherToken.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'));
    assert.match((await curl(`-H "Authorization: Bearer ${forged}" "$OPENAI_BASE_URL/models"`)).stdout, /bad signature[\s\S]*\n401$/);
    // Long-running processes find a fresh token in a file the server keeps rotated.
    const fromFile = await sh(
      server,
      'agent',
      'for i in $(seq 50); do [ -s "$MOAT_SANDBOX_TOKEN_FILE" ] && break; sleep 0.1; done; curl -sS -w "\\n%{http_code}" -H "Authorization: Bearer $(cat "$MOAT_SANDBOX_TOKEN_FILE")" "$OPENAI_BASE_URL/models"',
    );
    assert.match(fromFile.stdout, /gpt-test[\s\S]*\n200$/, fromFile.stderr);
    const gw = (await sh(server, 'agent', 'printf %s "$MOAT_GATEWAY_URL"')).stdout;
    const fromHost = await fetch(`${gw}/v1/models`, { headers: { authorization: `Bearer ${otherToken}` } }).catch((err: Error) => err);
    assert.ok(fromHost instanceof Error || fromHost.status === 403, 'not from a sandbox address');
  });

  test('model allow-list and budgets are enforced; refusals and calls are audited', async () => {
    const denied = await chat('gpt-forbidden');
    assert.match(denied.stdout, /model \\"gpt-forbidden\\" is not allowed for namespace \\"default\\"[\s\S]*\n403$/);
    assert.equal((await openai).seen.filter((s) => s.body.includes('gpt-forbidden')).length, 0, 'never forwarded');

    const used = ((await (await server.api(`${NSV1}/gateway/usage`)).json()) as { items: { requests: number }[] }).items.reduce((n, u) => n + u.requests, 0);
    await server.api(`${NSV1}/gateway`, { method: 'PUT', json: { ...(await config()), budgets: { requestsPerDay: used + 1 } } });
    assert.match((await chat('gpt-test')).stdout, /\n200$/);
    assert.match((await chat('gpt-test')).stdout, /budget of \d+ requests today[\s\S]*\n429$/);

    const events = (
      (await (await server.api('/apis/moat.dev/v1/audit?action=gateway.call')).json()) as {
        items: { result: string; sandbox: string; object: string; detail: Record<string, unknown> }[];
      }
    ).items;
    assert.ok(events.some((e) => e.result === 'success' && e.detail.model === 'gpt-test' && e.detail.inputTokens === 11 && e.sandbox === 'agent'));
    assert.ok(events.some((e) => e.result === 'denied' && e.detail.status === 403 && String(e.detail.error).includes('gpt-forbidden')));
    assert.ok(events.some((e) => e.result === 'denied' && e.detail.status === 429));
    assert.ok(events.some((e) => e.object === 'proxy github GET /user/repos'));
    const reveals = ((await (await server.api('/apis/moat.dev/v1/audit?action=secrets.gateway')).json()) as { items: { object: string }[] }).items;
    assert.ok(reveals.some((e) => e.object === 'secrets/github'));
    assert.deepEqual(leaks(await (await server.api('/apis/moat.dev/v1/audit/export')).text()), [], 'no key in the audit log');
  });

  test('upstreams must be public or pinned by the operator; unlisted secrets stay unusable', async () => {
    await server.api(`${NSV1}/gateway`, {
      method: 'PUT',
      json: { ...(await config()), openai: { baseUrl: `http://127.0.0.1:${(await openai).port}`, secret: 'openai' } },
    });
    assert.match((await chat('gpt-test')).stdout, /not a public address[\s\S]*\n403$/);
    await server.api(`${NSV1}/gateway`, {
      method: 'PUT',
      json: { ...(await config()), openai: { baseUrl: `http://openai.test:${(await openai).port}`, secret: 'anthropic-unlisted' } },
    });
    assert.match((await chat('gpt-test')).stdout, /does not list secret \\"anthropic-unlisted\\" in spec.secrets[\s\S]*\n403$/);
    const closed = await upstream(() => {});
    await closed.close();
    await server.api(`${NSV1}/gateway`, {
      method: 'PUT',
      json: {
        ...(await config()),
        credentials: [{ name: 'down', baseUrl: `http://github.test:${closed.port}`, headers: { Authorization: 'Bearer {{secret:github}}' } }],
      },
    });
    const down = await curl(`-H "Authorization: Bearer $MOAT_SANDBOX_TOKEN" -d x "$MOAT_GATEWAY_URL/proxy/down/x"`);
    assert.match(down.stdout, /upstream failed[\s\S]*\n502$/);
    assert.deepEqual(leaks(down.stdout), []);
  });
});
