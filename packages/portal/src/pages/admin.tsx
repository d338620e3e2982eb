import { useState, type FormEvent, type ReactNode } from 'react';
import { MOAT_API, api, bytes, type Me } from '../api.js';
import { ConfirmButton, ErrorBox, Field, Table, useAction, usePoll } from '../ui.js';

interface Quota {
  sandboxes?: number;
  cpu?: string;
  memory?: string;
  storage?: string;
}
interface User {
  name: string;
  role: string;
  quota: Quota;
  createdAt: string;
}
interface Agent {
  user: string;
  name: string;
  namespace: string;
  quota: Quota;
  createdAt: string;
}
interface Key {
  id: string;
  name: string;
  user: string;
  agent?: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
  key?: string;
}
interface Capacity {
  cpu: { cores: number; load: number[] };
  memory: { totalBytes: number; freeBytes: number };
  disk?: { totalBytes: number; freeBytes: number };
  sandboxes: { total: number; perRuntime: Record<string, { available: boolean; total: number; byPhase: Record<string, number> }> };
}

const USERS = `${MOAT_API}/users`;
const quotaText = (q: Quota) =>
  Object.entries(q)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ') || 'none';

/** A new key, shown once: the server keeps only its hash. */
function NewKey({ secret, onDismiss }: { secret: { label: string; key: string }; onDismiss: () => void }) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="card secret" role="alert">
      <p>
        <strong>{secret.label}</strong> — copy it now: it is shown only this once.
      </p>
      <code className="mono" data-new-key>
        {secret.key}
      </code>
      <div className="row">
        <button
          type="button"
          onClick={() =>
            navigator.clipboard?.writeText(secret.key).then(
              () => setCopied(true),
              () => {},
            )
          }
        >
          {copied ? 'Copied' : 'Copy'}
        </button>
        <button type="button" onClick={onDismiss}>
          Done
        </button>
      </div>
    </div>
  );
}

function Form({ label, onSubmit, children }: { label: string; onSubmit: () => Promise<void>; children: ReactNode }) {
  const { busy, error, run } = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void run(onSubmit);
  };
  return (
    <form onSubmit={submit} aria-label={label} className="inline-form">
      <div className="row wrap">
        {children}
        <button type="submit" className="primary" disabled={busy}>
          {label}
        </button>
      </div>
      <ErrorBox error={error} />
    </form>
  );
}

function QuotaFields({ value, onChange }: { value: Quota; onChange: (q: Quota) => void }) {
  const set = (k: keyof Quota, v: string) => {
    const next = { ...value };
    if (!v) delete next[k];
    else if (k === 'sandboxes') next.sandboxes = Number(v);
    else next[k] = v;
    onChange(next);
  };
  return (
    <>
      <Field label="Max sandboxes">
        {(id) => <input id={id} type="number" min={0} value={value.sandboxes ?? ''} onChange={(e) => set('sandboxes', e.target.value)} />}
      </Field>
      <Field label="CPU">{(id) => <input id={id} placeholder="e.g. 4" value={value.cpu ?? ''} onChange={(e) => set('cpu', e.target.value)} />}</Field>
      <Field label="Memory">
        {(id) => <input id={id} placeholder="e.g. 8Gi" value={value.memory ?? ''} onChange={(e) => set('memory', e.target.value)} />}
      </Field>
      <Field label="Storage">
        {(id) => <input id={id} placeholder="e.g. 50Gi" value={value.storage ?? ''} onChange={(e) => set('storage', e.target.value)} />}
      </Field>
    </>
  );
}

function UserPanel({ user, onChanged, onSecret }: { user: User; onChanged: () => void; onSecret: (s: { label: string; key: string }) => void }) {
  const base = `${USERS}/${encodeURIComponent(user.name)}`;
  const agents = usePoll(async () => (await api<{ items: Agent[] }>(`${base}/agents`)).items, 0, [user.name]);
  const keys = usePoll(async () => (await api<{ items: Key[] }>(`${base}/keys`)).items, 0, [user.name]);
  const [role, setRole] = useState(user.role);
  const [quota, setQuota] = useState<Quota>(user.quota);
  const [agentName, setAgentName] = useState('');
  const [keyName, setKeyName] = useState('');
  const [keyAgent, setKeyAgent] = useState('');
  const [agentQuota, setAgentQuota] = useState<{ agent: string; quota: Quota }>();
  return (
    <section className="card" aria-labelledby="user-title">
      <h2 id="user-title">User {user.name}</h2>
      <h3>Role and quota</h3>
      <Form label="Save role and quota" onSubmit={async () => (await api(base, { method: 'PATCH', json: { role, quota } }), onChanged())}>
        <Field label="Role">
          {(id) => (
            <select id={id} value={role} onChange={(e) => setRole(e.target.value)}>
              <option>admin</option>
              <option>member</option>
              <option>viewer</option>
            </select>
          )}
        </Field>
        <QuotaFields value={quota} onChange={setQuota} />
      </Form>

      <h3>Agents</h3>
      <ErrorBox error={agents.error} />
      <Table headers={['Agent', 'Namespace', 'Quota', 'Actions']}>
        {(agents.data ?? []).map((a) => (
          <tr key={a.name}>
            <th scope="row">{a.name}</th>
            <td>{a.namespace}</td>
            <td>{quotaText(a.quota)}</td>
            <td className="actions">
              <button type="button" onClick={() => setAgentQuota({ agent: a.name, quota: a.quota })} aria-label={`Edit the quota of agent ${a.name}`}>
                Quota
              </button>
              <ConfirmButton
                label="Delete"
                danger
                question={`Delete agent "${a.name}" and its keys? Its namespace must be empty.`}
                onConfirm={async () => (await api(`${base}/agents/${encodeURIComponent(a.name)}`, { method: 'DELETE' }), agents.reload(), keys.reload())}
              />
            </td>
          </tr>
        ))}
      </Table>
      {agentQuota ? (
        <Form
          label={`Save quota of ${agentQuota.agent}`}
          onSubmit={async () => {
            await api(`${base}/agents/${encodeURIComponent(agentQuota.agent)}`, { method: 'PATCH', json: { quota: agentQuota.quota } });
            setAgentQuota(undefined);
            agents.reload();
          }}
        >
          <QuotaFields value={agentQuota.quota} onChange={(quota) => setAgentQuota({ ...agentQuota, quota })} />
        </Form>
      ) : null}
      <Form
        label="Create agent"
        onSubmit={async () => (await api(`${base}/agents`, { method: 'POST', json: { name: agentName } }), setAgentName(''), agents.reload())}
      >
        <Field label="Agent name">{(id) => <input id={id} required value={agentName} onChange={(e) => setAgentName(e.target.value)} />}</Field>
      </Form>

      <h3>API keys</h3>
      <ErrorBox error={keys.error} />
      <Table headers={['ID', 'Name', 'Agent', 'Created', 'State', 'Actions']}>
        {(keys.data ?? []).map((k) => (
          <tr key={k.id}>
            <th scope="row" className="mono">
              {k.id}
            </th>
            <td>{k.name}</td>
            <td>{k.agent ?? '(user key)'}</td>
            <td>{new Date(k.createdAt).toLocaleString()}</td>
            <td>
              {k.revokedAt ? (
                <span className="bad">revoked</span>
              ) : k.expiresAt ? (
                `expires ${new Date(k.expiresAt).toLocaleString()}`
              ) : (
                <span className="ok">active</span>
              )}
            </td>
            <td>
              {k.revokedAt ? null : (
                <ConfirmButton
                  label="Revoke"
                  danger
                  question={`Revoke key ${k.id} ("${k.name}")? Everything using it, portal sessions too, stops working at once.`}
                  onConfirm={async () => (await api(`${base}/keys/${k.id}`, { method: 'DELETE' }), keys.reload())}
                />
              )}
            </td>
          </tr>
        ))}
      </Table>
      <Form
        label="Create key"
        onSubmit={async () => {
          const k = await api<Key>(`${base}/keys`, { method: 'POST', json: { name: keyName, ...(keyAgent ? { agent: keyAgent } : {}) } });
          onSecret({ label: `New key ${k.id} for ${user.name}${k.agent ? `/${k.agent}` : ''}`, key: k.key! });
          setKeyName('');
          keys.reload();
        }}
      >
        <Field label="Key name">{(id) => <input id={id} required value={keyName} onChange={(e) => setKeyName(e.target.value)} />}</Field>
        <Field label="For agent">
          {(id) => (
            <select id={id} value={keyAgent} onChange={(e) => setKeyAgent(e.target.value)}>
              <option value="">(the user: all its agents)</option>
              {(agents.data ?? []).map((a) => (
                <option key={a.name}>{a.name}</option>
              ))}
            </select>
          )}
        </Field>
      </Form>
    </section>
  );
}

function Capacity() {
  const cap = usePoll(() => api<Capacity>(`${MOAT_API}/portal/capacity`), 5000, []);
  const c = cap.data;
  return (
    <section className="card" aria-labelledby="cap-title">
      <h2 id="cap-title">Host capacity</h2>
      <ErrorBox error={cap.error} />
      {c ? (
        <>
          <dl className="kv">
            <dt>CPU</dt>
            <dd>
              {c.cpu.cores} cores, load {c.cpu.load.map((l) => l.toFixed(2)).join(' / ')}
            </dd>
            <dt>Memory</dt>
            <dd>
              <meter min={0} max={c.memory.totalBytes} value={c.memory.totalBytes - c.memory.freeBytes} aria-label="memory in use" />{' '}
              {bytes(c.memory.totalBytes - c.memory.freeBytes)} used of {bytes(c.memory.totalBytes)}
            </dd>
            {c.disk ? (
              <>
                <dt>Disk</dt>
                <dd>
                  <meter min={0} max={c.disk.totalBytes} value={c.disk.totalBytes - c.disk.freeBytes} aria-label="disk in use" /> {bytes(c.disk.freeBytes)} free
                  of {bytes(c.disk.totalBytes)}
                </dd>
              </>
            ) : null}
            <dt>Sandboxes</dt>
            <dd>{c.sandboxes.total}</dd>
          </dl>
          <table>
            <thead>
              <tr>
                <th scope="col">Runtime</th>
                <th scope="col">Available</th>
                <th scope="col">Sandboxes</th>
                <th scope="col">By phase</th>
              </tr>
            </thead>
            <tbody>
              {Object.entries(c.sandboxes.perRuntime).map(([r, v]) => (
                <tr key={r}>
                  <th scope="row">{r}</th>
                  <td>{v.available ? <span className="ok">yes</span> : <span className="muted">no</span>}</td>
                  <td>{v.total}</td>
                  <td>
                    {Object.entries(v.byPhase)
                      .map(([p, n]) => `${p} ${n}`)
                      .join(', ') || '—'}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : null}
    </section>
  );
}

export default function Admin({ me }: { me: Me }) {
  const users = usePoll(async () => (await api<{ items: User[] }>(USERS)).items, 0, []);
  const [selected, setSelected] = useState(me.user);
  const [secret, setSecret] = useState<{ label: string; key: string }>();
  const [name, setName] = useState('');
  const [role, setRole] = useState('member');
  const user = users.data?.find((u) => u.name === selected);
  return (
    <div className="admin">
      <h1>Admin</h1>
      {secret ? <NewKey secret={secret} onDismiss={() => setSecret(undefined)} /> : null}
      <div className="grid">
        <section className="card" aria-labelledby="users-title">
          <h2 id="users-title">Users</h2>
          <ErrorBox error={users.error} />
          <Table headers={['User', 'Role', 'Quota', 'Actions']}>
            {(users.data ?? []).map((u) => (
              <tr key={u.name} aria-selected={u.name === selected}>
                <th scope="row">
                  <button type="button" className="link" onClick={() => setSelected(u.name)} aria-pressed={u.name === selected}>
                    {u.name}
                  </button>
                </th>
                <td>{u.role}</td>
                <td>{quotaText(u.quota)}</td>
                <td>
                  {u.name === me.user ? null : (
                    <ConfirmButton
                      label="Delete"
                      danger
                      question={`Delete user "${u.name}" and their keys? They must own nothing any more.`}
                      onConfirm={async () => (await api(`${USERS}/${encodeURIComponent(u.name)}`, { method: 'DELETE' }), users.reload())}
                    />
                  )}
                </td>
              </tr>
            ))}
          </Table>
          <Form
            label="Create user"
            onSubmit={async () => {
              const u = await api<User & { key: Key }>(USERS, { method: 'POST', json: { name, role } });
              setSecret({ label: `First key of ${u.name}`, key: u.key.key! });
              setName('');
              setSelected(u.name);
              users.reload();
            }}
          >
            <Field label="User name">{(id) => <input id={id} required value={name} onChange={(e) => setName(e.target.value)} />}</Field>
            <Field label="Role">
              {(id) => (
                <select id={id} value={role} onChange={(e) => setRole(e.target.value)}>
                  <option>member</option>
                  <option>viewer</option>
                  <option>admin</option>
                </select>
              )}
            </Field>
          </Form>
        </section>
        <Capacity />
      </div>
      {user ? <UserPanel key={user.name} user={user} onChanged={users.reload} onSecret={setSecret} /> : null}
    </div>
  );
}
