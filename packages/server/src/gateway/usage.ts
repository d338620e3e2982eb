import type { Store } from '../store/store.js';

export interface UsageRow {
  day: string;
  namespace: string;
  sandbox: string;
  model: string;
  user: string;
  agent: string;
  requests: number;
  inputTokens: number;
  outputTokens: number;
}

export const today = () => new Date().toISOString().slice(0, 10);

export async function addUsage(store: Store, u: Omit<UsageRow, 'day' | 'requests'>): Promise<void> {
  const row = {
    day: today(),
    namespace: u.namespace,
    sandbox: u.sandbox,
    model: u.model,
    user: u.user,
    agent: u.agent,
    requests: 1,
    input_tokens: u.inputTokens,
    output_tokens: u.outputTokens,
  };
  await store.db
    .insertInto('gateway_usage')
    .values(row)
    .onConflict((oc) =>
      oc.columns(['day', 'namespace', 'sandbox', 'model']).doUpdateSet((eb) => ({
        requests: eb('gateway_usage.requests', '+', 1),
        input_tokens: eb('gateway_usage.input_tokens', '+', u.inputTokens),
        output_tokens: eb('gateway_usage.output_tokens', '+', u.outputTokens),
      })),
    )
    .execute();
}

export async function usage(store: Store, namespace: string, day: string): Promise<UsageRow[]> {
  const rows = await store.db
    .selectFrom('gateway_usage')
    .selectAll()
    .where('namespace', '=', namespace)
    .where('day', '=', day)
    .orderBy('sandbox')
    .orderBy('model')
    .execute();
  return rows.map((r) => ({
    day: r.day,
    namespace: r.namespace,
    sandbox: r.sandbox,
    model: r.model,
    user: r.user,
    agent: r.agent,
    requests: r.requests,
    inputTokens: r.input_tokens,
    outputTokens: r.output_tokens,
  }));
}

/** Today's totals of a namespace, for its budgets. */
export async function spentToday(store: Store, namespace: string): Promise<{ requests: number; tokens: number }> {
  const rows = await usage(store, namespace, today());
  return { requests: rows.reduce((n, r) => n + r.requests, 0), tokens: rows.reduce((n, r) => n + r.inputTokens + r.outputTokens, 0) };
}
