import { useRef, useState, type FormEvent } from 'react';
import {
  EXTENSIONS_API_VERSION,
  LABELS,
  MOAT_API,
  SANDBOX_API,
  api,
  bytes,
  condition,
  duration,
  objectPath,
  sandboxPath,
  type KObject,
  type Me,
  type Sandbox,
  type Usage,
} from '../api.js';
import { ConfirmButton, ErrorBox, Field, Phase, Table, href, useAction, useNow, usePoll } from '../ui.js';

interface UsageItem {
  namespace: string;
  name: string;
  owner?: { user: string; agent: string };
  template?: string;
  usage?: Usage;
}

export const canWrite = (me: Me, namespace: string) => (me.role === 'admin' && !me.agent) || (me.role !== 'viewer' && me.namespaces.includes(namespace));

/** Pause, resume, hibernate, wake, extend and delete, each asked first. */
export function SandboxActions({ me, sandbox, onChange, onDeleted }: { me: Me; sandbox: Sandbox; onChange: () => void; onDeleted?: () => void }) {
  const { namespace, name } = sandbox.metadata;
  const path = sandboxPath(namespace, name);
  const phase = sandbox.status.phase;
  const writable = canWrite(me, namespace);
  const why = writable ? undefined : 'your key may only read this sandbox';
  return (
    <div className="actions" role="group" aria-label={`Actions for ${name}`}>
      {phase === 'Paused' ? (
        <ConfirmButton
          label="Resume"
          question={`Resume sandbox "${name}"? Its processes continue where they stopped.`}
          disabled={!writable}
          title={why}
          onConfirm={async () => (await api(`${path}/resume`, { method: 'POST' }), onChange())}
        />
      ) : (
        <ConfirmButton
          label="Pause"
          question={`Pause sandbox "${name}"? Every process in it is frozen until you resume it; its memory stays allocated.`}
          disabled={!writable || phase !== 'Running'}
          title={why ?? (phase !== 'Running' ? `only a Running sandbox can be paused (this one is ${phase})` : undefined)}
          onConfirm={async () => (await api(`${path}/pause`, { method: 'POST' }), onChange())}
        />
      )}
      {phase === 'Hibernated' ? (
        <ConfirmButton
          label="Wake"
          question={`Wake sandbox "${name}"? It is restored from disk (with its memory where the runtime could save it).`}
          disabled={!writable}
          title={why}
          onConfirm={async () => (await api(`${path}/wake`, { method: 'POST' }), onChange())}
        />
      ) : (
        <ConfirmButton
          label="Hibernate"
          question={`Hibernate sandbox "${name}"? Its processes and memory are saved to disk where the runtime can (otherwise it is stopped with its disks kept) and its memory is freed; using it wakes it.`}
          disabled={!writable || (phase !== 'Running' && phase !== 'Paused')}
          title={why ?? (phase !== 'Running' && phase !== 'Paused' ? `only a Running or Paused sandbox can be hibernated (this one is ${phase})` : undefined)}
          onConfirm={async () => (await api(`${path}/hibernate`, { method: 'POST' }), onChange())}
        />
      )}
      <ConfirmButton
        label="Extend 1h"
        question={`Shut sandbox "${name}" down one hour from now${sandbox.spec.shutdownTime ? ` instead of at ${new Date(sandbox.spec.shutdownTime).toLocaleString()}` : ''}?${phase === 'Hibernated' ? ' An expired sandbox wakes again.' : ''}`}
        disabled={!writable || phase === 'Terminating'}
        title={why}
        onConfirm={async () => (await api(`${path}/extend`, { method: 'POST', json: { ttlSeconds: 3600 } }), onChange())}
      />
      <ConfirmButton
        label="Delete"
        danger
        question={`Delete sandbox "${name}" and everything in it? This cannot be undone.`}
        disabled={!writable}
        title={why}
        onConfirm={async () => {
          await api(path, { method: 'DELETE' });
          (onDeleted ?? onChange)();
        }}
      />
    </div>
  );
}

function Ttl({ shutdownTime, now }: { shutdownTime?: string | undefined; now: number }) {
  if (!shutdownTime) return <span className="muted">none</span>;
  const left = Date.parse(shutdownTime) - now;
  return (
    <time dateTime={shutdownTime} title={`shuts down at ${new Date(shutdownTime).toLocaleString()}`}>
      {left > 0 ? duration(left) : 'due'}
    </time>
  );
}

function CreateSandbox({ me, onCreated }: { me: Me; onCreated: (ns: string, name: string) => void }) {
  const writable = me.namespaces.filter((ns) => canWrite(me, ns));
  const [namespace, setNamespace] = useState(me.namespace && writable.includes(me.namespace) ? me.namespace : (writable[0] ?? ''));
  const templates = usePoll(async () => (namespace ? (await api<{ items: KObject[] }>(objectPath('sandboxtemplates', namespace))).items : []), 0, [namespace]);
  const [template, setTemplate] = useState('');
  const [name, setName] = useState('');
  const { busy, error, run } = useAction();
  if (!writable.length) return null;
  const chosen = template || templates.data?.[0]?.metadata.name || '';
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void run(async () => {
      // A claim gets a sandbox of its own name from the template (from a warm pool when one is ready).
      const claim = {
        apiVersion: EXTENSIONS_API_VERSION,
        kind: 'SandboxClaim',
        metadata: { name: name.trim() },
        spec: { sandboxTemplateRef: { name: chosen } },
      };
      await api(objectPath('sandboxclaims', namespace), { method: 'POST', json: claim });
      onCreated(namespace, name.trim());
      setName('');
    });
  };
  return (
    <form className="card create" onSubmit={submit} aria-labelledby="create-title">
      <h2 id="create-title">Create a sandbox</h2>
      <div className="row wrap">
        <Field label="Namespace">
          {(id) => (
            <select id={id} value={namespace} onChange={(e) => setNamespace(e.target.value)}>
              {writable.map((ns) => (
                <option key={ns}>{ns}</option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Template">
          {(id) => (
            <select id={id} value={chosen} onChange={(e) => setTemplate(e.target.value)} required>
              {(templates.data ?? []).map((t) => (
                <option key={t.metadata.name} value={t.metadata.name}>
                  {t.metadata.name}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Name" hint="lowercase letters, digits and -">
          {(id) => (
            <input id={id} name="name" required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxLength={63} value={name} onChange={(e) => setName(e.target.value)} />
          )}
        </Field>
        <button className="primary" type="submit" disabled={busy || !chosen}>
          {busy ? 'Creating…' : 'Create'}
        </button>
      </div>
      <ErrorBox error={error ?? templates.error} />
    </form>
  );
}

export function SandboxList({ me }: { me: Me }) {
  const now = useNow();
  const prev = useRef(new Map<string, { t: number; cpu: number }>());
  const cpu = useRef(new Map<string, number>());
  const list = usePoll(
    async () => {
      const [sandboxes, usage] = await Promise.all([
        api<{ items: Sandbox[] }>(`${SANDBOX_API}/sandboxes`),
        api<{ time: string; items: UsageItem[] }>(`${MOAT_API}/portal/usage`),
      ]);
      const t = Date.parse(usage.time);
      for (const u of usage.items) {
        const key = `${u.namespace}/${u.name}`;
        const p = prev.current.get(key);
        if (u.usage && p && t > p.t) cpu.current.set(key, ((u.usage.cpuSeconds - p.cpu) / ((t - p.t) / 1000)) * 100);
        if (u.usage) prev.current.set(key, { t, cpu: u.usage.cpuSeconds });
      }
      return { sandboxes: sandboxes.items, usage: new Map(usage.items.map((u) => [`${u.namespace}/${u.name}`, u])) };
    },
    2000,
    [],
  );
  const [filter, setFilter] = useState('');
  const items = (list.data?.sandboxes ?? []).filter((s) => !filter || `${s.metadata.namespace}/${s.metadata.name}`.includes(filter));
  return (
    <section aria-labelledby="sandboxes-title">
      <div className="row spread">
        <h1 id="sandboxes-title">Sandboxes</h1>
        <Field label="Filter">
          {(id) => <input id={id} type="search" value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="namespace/name" />}
        </Field>
      </div>
      <CreateSandbox me={me} onCreated={(ns, name) => (window.location.hash = href('sandboxes', ns, name))} />
      <ErrorBox error={list.error} />
      <Table
        headers={['Name', 'Namespace', 'Status', 'Runtime', 'Template', 'Owner', 'Age', 'CPU', 'Memory', 'TTL', 'Actions']}
        caption="Sandboxes you can see, updated every two seconds"
        aria-busy={!list.data}
      >
        {items.map((s) => {
          const key = `${s.metadata.namespace}/${s.metadata.name}`;
          const u = list.data?.usage.get(key);
          const ready = condition(s);
          const c = cpu.current.get(key);
          const created = s.metadata.creationTimestamp ? Date.parse(s.metadata.creationTimestamp) : undefined;
          return (
            <tr key={key} data-sandbox={key}>
              <th scope="row">
                <a href={href('sandboxes', s.metadata.namespace, s.metadata.name)}>{s.metadata.name}</a>
                {s.metadata.labels?.[LABELS.pool] ? (
                  <span className="badge" title="waiting unclaimed in a warm pool">
                    pool
                  </span>
                ) : null}
              </th>
              <td>{s.metadata.namespace}</td>
              <td>
                <Phase phase={s.status.phase} />
                {ready && ready.status !== 'True' && s.status.phase !== 'Paused' ? <small className="muted"> {ready.reason}</small> : null}
              </td>
              <td>{s.status.runtimeClassName ?? s.spec.podTemplate.spec.runtimeClassName ?? 'runc'}</td>
              <td>{s.metadata.labels?.[LABELS.template] ?? <span className="muted">—</span>}</td>
              <td>{u?.owner ? `${u.owner.user}/${u.owner.agent}` : '—'}</td>
              <td>{created ? duration(now - created) : '—'}</td>
              <td>{u?.usage && c !== undefined ? `${c.toFixed(1)}%` : '—'}</td>
              <td>{bytes(u?.usage?.memoryBytes)}</td>
              <td>
                <Ttl shutdownTime={s.spec.shutdownTime} now={now} />
              </td>
              <td>
                <SandboxActions me={me} sandbox={s} onChange={list.reload} />
              </td>
            </tr>
          );
        })}
        {list.data && !items.length ? (
          <tr>
            <td colSpan={11} className="muted">
              No sandboxes{filter ? ' match' : ' yet'}.
            </td>
          </tr>
        ) : null}
      </Table>
    </section>
  );
}
