import { ApiGateway, GatewayError, type GatewayCall, type LlmApi, type Upstream } from '@moat/gateway';
import type { Sandbox } from '@moat/core';
import type { SandboxAgent } from '@moat/runtime';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/log.js';
import type { Identity } from '../identity/identity.js';
import type { Networking } from '../network.js';
import type { Secrets } from '../secrets/secrets.js';
import { isLive, type Store } from '../store/store.js';
import { getGatewayConfig, modelAllowed, type GatewayConfig } from './config.js';
import type { SandboxTokens } from './tokens.js';
import { addUsage, spentToday } from './usage.js';

/** A sandbox calling the gateway, as identify() establishes it. */
interface Caller {
  sandbox: Sandbox;
  user: string;
  agent: string;
  address: string;
}

const SECRET_REF = /\{\{secret:([a-z0-9]([-a-z0-9]*[a-z0-9])?)\}\}/g;

/** Long-running processes read the current token here; it is rewritten before the one they hold expires. */
const TOKEN_FILE = '/run/moat/token';

/**
 * The API gateway as Moat serves it on the sandboxes' service address: sandbox
 * tokens, per-namespace providers, model allow-lists, budgets and credential
 * rules, secrets revealed only here, usage and audit for every call.
 */
export class GatewayService {
  /** uid → when its token file was last written. */
  private readonly written = new Map<string, number>();

  private constructor(
    private readonly gateway: ApiGateway<Caller>,
    private readonly tokens: SandboxTokens,
    private readonly identity: Identity,
    private readonly log: Logger,
  ) {}

  static async start(deps: {
    store: Store;
    network: Networking;
    tokens: SandboxTokens;
    secrets: Secrets;
    identity: Identity;
    audit: AuditLog;
    log: Logger;
    port: number;
    pinnedHosts?: Record<string, string>;
    lookup?(host: string): Promise<string[]>;
  }) {
    const { store, network, tokens, secrets, identity, audit, log } = deps;

    async function identify(address: string, token: string | undefined): Promise<Caller> {
      const uid = network.sandboxAt(address);
      if (!uid) throw new GatewayError(403, `${address} is not a sandbox address`);
      if (!token) throw new GatewayError(401, 'missing sandbox token: send "Authorization: Bearer $MOAT_SANDBOX_TOKEN"');
      const claims = tokens.verify(token);
      if (typeof claims === 'string') throw new GatewayError(401, claims);
      if (claims.uid !== uid)
        throw new GatewayError(403, `this token is sandbox "${claims.namespace}/${claims.sandbox}"'s and is valid only from its own address`);
      const found = await store.getSandboxByUid(uid);
      if (!found || !isLive(found.desired)) throw new GatewayError(401, 'the sandbox token was revoked: its sandbox is being deleted');
      return { sandbox: found.sandbox, user: claims.user, agent: claims.agent, address };
    }

    async function config(c: Caller): Promise<GatewayConfig> {
      const cfg = await getGatewayConfig(store, c.sandbox.metadata.namespace);
      if (!cfg)
        throw new GatewayError(
          403,
          `namespace "${c.sandbox.metadata.namespace}" has no gateway configuration (PUT .../namespaces/${c.sandbox.metadata.namespace}/gateway)`,
        );
      return cfg;
    }

    /** A secret's value, only if the sandbox names it in spec.secrets. */
    async function secret(c: Caller, name: string): Promise<string> {
      if (!c.sandbox.spec.secrets?.some((s) => s.name === name)) {
        throw new GatewayError(403, `sandbox "${c.sandbox.metadata.name}" does not list secret "${name}" in spec.secrets`);
      }
      try {
        return await secrets.reveal(c.sandbox.metadata.namespace, name, {
          actor: { user: c.user, agent: c.agent, source: c.address },
          purpose: 'secrets.gateway',
          sandbox: c.sandbox.metadata.name,
        });
      } catch {
        throw new GatewayError(403, `secret "${name}" is not available in namespace "${c.sandbox.metadata.namespace}"`);
      }
    }

    async function llm(c: Caller, api: LlmApi, model: string | undefined): Promise<Upstream> {
      const cfg = await config(c);
      const ns = c.sandbox.metadata.namespace;
      const provider = cfg[api];
      if (!provider) throw new GatewayError(403, `namespace "${ns}" has no ${api} provider in its gateway configuration`);
      if (model !== undefined && !modelAllowed(cfg.models, model)) {
        throw new GatewayError(403, `model "${model}" is not allowed for namespace "${ns}"; allowed: ${cfg.models?.join(', ') || 'none'}`);
      }
      const b = cfg.budgets;
      if (b?.requestsPerDay !== undefined || b?.tokensPerDay !== undefined) {
        const spent = await spentToday(store, ns);
        if (b.requestsPerDay !== undefined && spent.requests >= b.requestsPerDay)
          throw new GatewayError(429, `namespace "${ns}" used its budget of ${b.requestsPerDay} requests today (UTC)`);
        if (b.tokensPerDay !== undefined && spent.tokens >= b.tokensPerDay)
          throw new GatewayError(429, `namespace "${ns}" used its budget of ${b.tokensPerDay} tokens today (UTC): ${spent.tokens} used`);
      }
      const key = await secret(c, provider.secret);
      const headers: Record<string, string> = api === 'openai' ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };
      return { baseUrl: provider.baseUrl, headers, secrets: [key], allowModel: (m) => modelAllowed(cfg.models, m) };
    }

    async function credential(c: Caller, name: string): Promise<Upstream> {
      const rule = (await config(c)).credentials?.find((r) => r.name === name);
      if (!rule) throw new GatewayError(404, `no credential rule "${name}" in namespace "${c.sandbox.metadata.namespace}"`);
      const values: string[] = [];
      const headers: Record<string, string> = {};
      for (const [header, template] of Object.entries(rule.headers)) {
        let value = template;
        for (const m of template.matchAll(SECRET_REF)) {
          const v = await secret(c, m[1]!);
          values.push(v);
          value = value.replace(m[0], v);
        }
        headers[header] = value;
      }
      return { baseUrl: rule.baseUrl, headers, secrets: values };
    }

    function done(c: Caller | undefined, call: GatewayCall, address: string) {
      const s = c?.sandbox.metadata;
      void (async () => {
        if (c && call.api && call.error === undefined) {
          await addUsage(store, {
            namespace: s!.namespace,
            sandbox: s!.name,
            model: call.model ?? '',
            user: c.user,
            agent: c.agent,
            inputTokens: call.inputTokens,
            outputTokens: call.outputTokens,
          });
        }
        await audit.record({
          actor: { user: c?.user, agent: c?.agent, source: address },
          action: 'gateway.call',
          namespace: s?.namespace,
          sandbox: s?.name,
          object: call.route,
          result: call.error === undefined ? 'success' : call.status === 401 || call.status === 403 || call.status === 429 ? 'denied' : 'failed',
          detail: {
            status: call.status,
            ...(call.model ? { model: call.model } : {}),
            inputTokens: call.inputTokens,
            outputTokens: call.outputTokens,
            durationMs: call.durationMs,
            ...(call.error ? { error: call.error } : {}),
          },
        });
      })().catch((err: unknown) => log.error({ err }, 'could not record a gateway call'));
    }

    const gateway = await ApiGateway.start<Caller>({
      host: network.serviceAddress,
      port: deps.port,
      identify,
      llm,
      credential,
      done,
      ...(deps.pinnedHosts ? { pinnedHosts: deps.pinnedHosts } : {}),
      ...(deps.lookup ? { lookup: deps.lookup } : {}),
    });
    return new GatewayService(gateway, tokens, identity, log);
  }

  get url(): string {
    return this.gateway.url;
  }

  /**
   * What a sandbox's processes need to use the gateway: its URL, a fresh token,
   * and the variables OpenAI and Anthropic SDKs read, pointing at it. The
   * gateway is reached directly, not through the egress proxy.
   */
  async env(s: Sandbox): Promise<Record<string, string>> {
    const owner = await this.identity.owner(s.metadata.namespace);
    const token = this.tokens.mint(s, { user: owner?.user ?? '', agent: owner?.agent ?? '' });
    const host = new URL(this.url).hostname;
    const noProxy = `localhost,127.0.0.1,${host}`;
    return {
      MOAT_GATEWAY_URL: this.url,
      MOAT_SANDBOX_TOKEN: token,
      MOAT_SANDBOX_TOKEN_FILE: TOKEN_FILE,
      OPENAI_BASE_URL: `${this.url}/v1`,
      OPENAI_API_KEY: token,
      ANTHROPIC_BASE_URL: this.url,
      ANTHROPIC_API_KEY: token,
      NO_PROXY: noProxy,
      no_proxy: noProxy,
    };
  }

  /**
   * Rotation: every running sandbox gets a fresh token in TOKEN_FILE when a
   * third of the last one's life has passed (and soon after it starts).
   */
  async refreshTokenFiles(sandboxes: { list(): Promise<Sandbox[]>; agent(s: Sandbox): Pick<SandboxAgent, 'writeFile' | 'rename'> }): Promise<void> {
    const live = (await sandboxes.list()).filter((s) => s.status.phase === 'Running');
    const uids = new Set(live.map((s) => s.metadata.uid));
    for (const uid of this.written.keys()) if (!uids.has(uid)) this.written.delete(uid);
    const due = Date.now() - (this.tokens.ttlSeconds * 1000) / 3;
    for (const s of live) {
      const uid = s.metadata.uid;
      if ((this.written.get(uid) ?? 0) > due) continue;
      try {
        const agent = sandboxes.agent(s);
        await agent.writeFile(`${TOKEN_FILE}.new`, (await this.env(s)).MOAT_SANDBOX_TOKEN!, { mode: 0o644 });
        await agent.rename(`${TOKEN_FILE}.new`, TOKEN_FILE);
        this.written.set(uid, Date.now());
      } catch (err) {
        this.log.warn({ err, sandbox: s.metadata.name }, 'could not refresh the sandbox token file');
      }
    }
  }

  close(): Promise<void> {
    return this.gateway.close();
  }
}
