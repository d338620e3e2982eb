import { Type, type Static } from '@sinclair/typebox';
import type { Store } from '../store/store.js';

const Name = Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' });
const BaseUrl = Type.String({
  maxLength: 2048,
  pattern: '^https?://[^\\s]+$',
  description: 'e.g. https://api.openai.com (the request path, /v1/..., is appended)',
});
const Provider = Type.Object(
  { baseUrl: BaseUrl, secret: Type.String({ ...Name, description: 'the secret holding the provider API key' }) },
  { additionalProperties: false },
);

/** A namespace's gateway settings: providers, model allow-list, daily budgets, credential-injection rules. */
export const GatewayConfigSchema = Type.Object(
  {
    /** OpenAI-compatible provider: its key goes in `Authorization: Bearer`. */
    openai: Type.Optional(Provider),
    /** Anthropic-compatible provider: its key goes in `x-api-key`. */
    anthropic: Type.Optional(Provider),
    /** Models sandboxes may use: exact names, `prefix*`, or `*`. None: no LLM call is allowed. */
    models: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 256 })),
    budgets: Type.Optional(
      Type.Object(
        { requestsPerDay: Type.Optional(Type.Integer({ minimum: 0 })), tokensPerDay: Type.Optional(Type.Integer({ minimum: 0 })) },
        { additionalProperties: false, description: 'per UTC day, over every sandbox of the namespace' },
      ),
    ),
    /** `/proxy/<name>/<path>` → `<baseUrl>/<path>` with these headers; `{{secret:NAME}}` in a value is the secret. */
    credentials: Type.Optional(
      Type.Array(
        Type.Object(
          {
            name: Name,
            baseUrl: BaseUrl,
            headers: Type.Record(Type.String({ pattern: '^[A-Za-z0-9-]{1,128}$' }), Type.String({ maxLength: 4096 })),
          },
          { additionalProperties: false },
        ),
        { maxItems: 64 },
      ),
    ),
  },
  { additionalProperties: false },
);
export type GatewayConfig = Static<typeof GatewayConfigSchema>;

export async function getGatewayConfig(store: Store, namespace: string): Promise<GatewayConfig | undefined> {
  const row = await store.db.selectFrom('gateway_configs').select('config').where('namespace', '=', namespace).executeTakeFirst();
  return row && (JSON.parse(row.config) as GatewayConfig);
}

export async function putGatewayConfig(store: Store, namespace: string, config: GatewayConfig): Promise<void> {
  const row = { namespace, config: JSON.stringify(config), updated_at: new Date().toISOString() };
  await store.db
    .insertInto('gateway_configs')
    .values(row)
    .onConflict((oc) => oc.column('namespace').doUpdateSet({ config: row.config, updated_at: row.updated_at }))
    .execute();
}

export async function deleteGatewayConfig(store: Store, namespace: string): Promise<boolean> {
  const r = await store.db.deleteFrom('gateway_configs').where('namespace', '=', namespace).executeTakeFirst();
  return Number(r.numDeletedRows) > 0;
}

export function modelAllowed(models: string[] | undefined, model: string): boolean {
  return (models ?? []).some((m) => m === '*' || m === model || (m.endsWith('*') && model.startsWith(m.slice(0, -1))));
}
