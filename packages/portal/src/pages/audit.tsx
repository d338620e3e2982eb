import { useState, type FormEvent } from 'react';
import { MOAT_API, api, type Me } from '../api.js';
import { ErrorBox, Field, Table, usePoll } from '../ui.js';

interface AuditEvent {
  seq: number;
  time: string;
  actor: { user?: string; agent?: string; keyId?: string; source: string };
  action: string;
  namespace?: string;
  sandbox?: string;
  object?: string;
  result: 'success' | 'denied' | 'failed';
  detail: Record<string, unknown>;
}

interface Verify {
  ok: boolean;
  events: number;
  checkpoints: number;
  brokenAt?: number;
  reason?: string;
}

const FIELDS = [
  ['sandbox', 'Sandbox'],
  ['namespace', 'Namespace'],
  ['user', 'User'],
  ['agent', 'Agent'],
  ['action', 'Action'],
] as const;
type Filters = Partial<Record<(typeof FIELDS)[number][0] | 'since', string>>;

const PAGE = 200;

export default function Audit({ me }: { me: Me }) {
  const [draft, setDraft] = useState<Filters>({});
  const [filters, setFilters] = useState<Filters>({});
  const [text, setText] = useState('');
  const [result, setResult] = useState('');
  const isAdmin = me.role === 'admin' && !me.agent;
  const verify = usePoll(async () => (isAdmin ? api<Verify>(`${MOAT_API}/audit/verify`) : undefined), 30000, [isAdmin]);
  // The newest page: the log is read oldest first, so find its end and read back from there.
  const events = usePoll(
    async () => {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) q.set(k, k === 'since' ? new Date(v).toISOString() : v);
      const all: AuditEvent[] = [];
      let after = 0;
      for (let i = 0; i < 50; i++) {
        q.set('after', String(after));
        q.set('limit', '1000');
        const page = (await api<{ items: AuditEvent[] }>(`${MOAT_API}/audit?${q}`)).items;
        all.push(...page);
        if (page.length < 1000) break;
        after = page[page.length - 1]!.seq;
        all.splice(0, Math.max(0, all.length - 5000));
      }
      return all.reverse();
    },
    5000,
    [JSON.stringify(filters)],
  );
  const [shown, setShown] = useState(PAGE);
  const needle = text.trim().toLowerCase();
  const rows = (events.data ?? []).filter((e) => (!result || e.result === result) && (!needle || JSON.stringify(e).toLowerCase().includes(needle)));
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setFilters(draft);
    setShown(PAGE);
  };
  return (
    <section aria-labelledby="audit-title">
      <div className="row spread wrap">
        <h1 id="audit-title">Audit log</h1>
        <p role="status" className={verify.data ? (verify.data.ok ? 'ok' : 'bad') : 'muted'} data-verify={verify.data ? String(verify.data.ok) : 'unknown'}>
          {isAdmin
            ? verify.data
              ? verify.data.ok
                ? `✔ Chain verified: ${verify.data.events} events, ${verify.data.checkpoints} signed checkpoints`
                : `✘ Chain broken at event ${verify.data.brokenAt}: ${verify.data.reason}`
              : verify.error
                ? `Verification failed: ${verify.error}`
                : 'Verifying the chain…'
            : 'Chain verification needs an admin key.'}
        </p>
      </div>
      <form className="card filters" onSubmit={submit} aria-label="Filter audit events">
        <div className="row wrap">
          {FIELDS.map(([k, label]) => (
            <Field key={k} label={label}>
              {(id) => (
                <input
                  id={id}
                  name={k}
                  value={draft[k] ?? ''}
                  onChange={(e) => setDraft({ ...draft, [k]: e.target.value })}
                  placeholder={k === 'action' ? 'e.g. POST sandboxclaims' : ''}
                />
              )}
            </Field>
          ))}
          <Field label="Since">
            {(id) => <input id={id} type="datetime-local" value={draft.since ?? ''} onChange={(e) => setDraft({ ...draft, since: e.target.value })} />}
          </Field>
          <button type="submit" className="primary">
            Apply
          </button>
          <button type="button" onClick={() => (setDraft({}), setFilters({}))}>
            Clear
          </button>
        </div>
        <div className="row wrap">
          <Field label="Search">
            {(id) => <input id={id} type="search" value={text} onChange={(e) => setText(e.target.value)} placeholder="any text in an event" />}
          </Field>
          <Field label="Result">
            {(id) => (
              <select id={id} value={result} onChange={(e) => setResult(e.target.value)}>
                <option value="">any</option>
                <option>success</option>
                <option>failed</option>
                <option>denied</option>
              </select>
            )}
          </Field>
        </div>
      </form>
      <ErrorBox error={events.error} />
      <p className="muted">
        {rows.length} event{rows.length === 1 ? '' : 's'}, newest first.
      </p>
      <Table headers={['#', 'Time', 'Actor', 'Action', 'Namespace', 'Object', 'Result', 'Detail']} className="audit">
        {rows.slice(0, shown).map((e) => (
          <tr key={e.seq} data-action={e.action} data-sandbox={e.sandbox ?? ''}>
            <td>{e.seq}</td>
            <td>
              <time dateTime={e.time}>{new Date(e.time).toLocaleString()}</time>
            </td>
            <td>
              {e.actor.user ?? '—'}
              {e.actor.agent ? `/${e.actor.agent}` : ''} <small className="muted">{e.actor.source}</small>
            </td>
            <td className="mono">{e.action}</td>
            <td>{e.namespace ?? '—'}</td>
            <td className="mono">{e.object ?? '—'}</td>
            <td>
              <span className={e.result === 'success' ? 'ok' : 'bad'}>{e.result}</span>
            </td>
            <td className="mono detail">{Object.keys(e.detail).length ? JSON.stringify(e.detail) : ''}</td>
          </tr>
        ))}
      </Table>
      {rows.length > shown ? (
        <button type="button" onClick={() => setShown(shown + PAGE)}>
          Show more
        </button>
      ) : null}
    </section>
  );
}
