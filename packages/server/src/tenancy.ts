import type { Sandbox, SandboxSpec } from '@moat/core';
import type { Actor } from './audit/log.js';
import type { Tenancy } from './backends/local/controllers/sandboxes.js';
import type { GatewayService } from './gateway/service.js';
import type { Identity } from './identity/identity.js';
import type { Quotas } from './identity/quotas.js';
import type { Secrets } from './secrets/secrets.js';

export interface ApiTenancy extends Tenancy {
  /** As `env`, for a call made by `actor` (an exec): the secrets it exposes are revealed on that actor's behalf. */
  env(sandbox: Sandbox, actor?: Actor): Promise<Record<string, string>>;
}

/** Quotas, secrets and the gateway (on one host), as sandboxes need them. */
export function tenancy(identity: Identity, quotas: Quotas, secrets: Secrets, gateway?: GatewayService): ApiTenancy {
  return {
    async admit<T>(namespace: string, spec: SandboxSpec, insert: () => Promise<T>): Promise<T> {
      await secrets.checkRefs(namespace, spec);
      return quotas.admit(namespace, spec, insert);
    },
    async env(sandbox: Sandbox, actor?: Actor) {
      let exposed: Record<string, string> = {};
      if (sandbox.spec.secrets?.some((s) => s.exposeAsEnv)) {
        // Without an actor the sandbox's main process is starting, on its owner's behalf.
        const owner = actor ? undefined : await identity.owner(sandbox.metadata.namespace);
        exposed = await secrets.exposedEnv(sandbox, actor ?? { user: owner?.user, agent: owner?.agent, source: 'sandbox start' });
      }
      // Opted-in secrets win: exposing OPENAI_API_KEY means bypassing the gateway on purpose.
      return { ...(await gateway?.env(sandbox)), ...exposed };
    },
  };
}
