import { useId, useState } from 'react';
import { YAMLParseError, parse, stringify } from 'yaml';
import { EXTENSIONS_API_VERSION, EXT_API, LABELS, ApiError, api, condition, errorText, objectPath, type KObject, type Me } from '../api.js';
import { ConfirmButton, ErrorBox, Field, Table, usePoll } from '../ui.js';
import { canWrite } from './sandboxes.js';

type Kind = 'SandboxTemplate' | 'SandboxWarmPool';
const PLURAL: Record<Kind, string> = { SandboxTemplate: 'sandboxtemplates', SandboxWarmPool: 'sandboxwarmpools' };

const STARTER: Record<Kind, string> = {
  SandboxTemplate: `apiVersion: ${EXTENSIONS_API_VERSION}
kind: SandboxTemplate
metadata:
  name: my-template
spec:
  podTemplate:
    spec:
      containers:
        - name: sandbox
          image: base
          resources:
            limits: { cpu: "1", memory: 512Mi }
`,
  SandboxWarmPool: `apiVersion: ${EXTENSIONS_API_VERSION}
kind: SandboxWarmPool
metadata:
  name: my-pool
spec:
  replicas: 2
  sandboxTemplateRef:
    name: base
`,
};

/** What a person edits: the object without what the server owns. */
function editable(o: KObject): string {
  const { uid: _u, creationTimestamp: _c, namespace: _n, ...meta } = o.metadata as KObject['metadata'] & Record<string, unknown>;
  delete (meta as Record<string, unknown>).resourceVersion;
  delete (meta as Record<string, unknown>).generation;
  const labels = { ...meta.labels };
  delete labels[LABELS.builtin];
  return stringify({
    apiVersion: o.apiVersion,
    kind: o.kind,
    metadata: { ...meta, ...(Object.keys(labels).length ? { labels } : { labels: undefined }) },
    spec: o.spec,
  });
}

interface Editing {
  kind: Kind;
  namespace: string;
  /** Absent: a new object (POST). */
  name?: string;
  builtin?: boolean;
  text: string;
}

function Editor({ editing, me, onDone }: { editing: Editing; me: Me; onDone: () => void }) {
  const [text, setText] = useState(editing.text);
  const [namespace, setNamespace] = useState(editing.namespace);
  const [error, setError] = useState<{ message: string; line?: number }>();
  const [busy, setBusy] = useState(false);
  const errId = useId();
  const writable = canWrite(me, namespace);
  const save = async () => {
    setError(undefined);
    let body: unknown;
    try {
      body = parse(text, { prettyErrors: true });
    } catch (err) {
      const e = err as YAMLParseError;
      return setError({ message: `YAML: ${e.message}`, ...(e.linePos?.[0] ? { line: e.linePos[0].line } : {}) });
    }
    if (!body || typeof body !== 'object') return setError({ message: 'The YAML must be one object (apiVersion, kind, metadata, spec).' });
    const obj = body as KObject;
    setBusy(true);
    try {
      // A built-in template is replaced by a namespace's own of the same name: saving one creates that copy.
      if (editing.name && !editing.builtin) await api(objectPath(PLURAL[editing.kind], namespace, editing.name), { method: 'PUT', json: obj });
      else await api(objectPath(PLURAL[editing.kind], namespace), { method: 'POST', json: obj });
      onDone();
    } catch (err) {
      setError({ message: err instanceof ApiError ? `${err.code} ${err.reason}: ${err.message}` : errorText(err) });
    } finally {
      setBusy(false);
    }
  };
  return (
    <section className="card" aria-labelledby="editor-title">
      <h2 id="editor-title">
        {editing.name ? `Edit ${editing.kind} ${editing.name}` : `New ${editing.kind}`}
        {editing.builtin ? <small className="muted"> (built in: saving makes this namespace's own copy)</small> : null}
      </h2>
      {!editing.name ? (
        <Field label="Namespace">
          {(id) => (
            <select id={id} value={namespace} onChange={(e) => setNamespace(e.target.value)}>
              {me.namespaces.map((ns) => (
                <option key={ns}>{ns}</option>
              ))}
            </select>
          )}
        </Field>
      ) : null}
      <Field label="YAML">
        {(id) => (
          <textarea
            id={id}
            className="yaml mono"
            spellCheck={false}
            rows={Math.min(40, Math.max(12, text.split('\n').length + 2))}
            value={text}
            onChange={(e) => setText(e.target.value)}
            aria-invalid={!!error}
            aria-describedby={error ? errId : undefined}
          />
        )}
      </Field>
      {error ? (
        <p id={errId} className="error" role="alert">
          {error.line ? <strong>Line {error.line}: </strong> : null}
          {error.message}
        </p>
      ) : null}
      <div className="row">
        <button
          type="button"
          className="primary"
          onClick={() => void save()}
          disabled={busy || !writable}
          title={writable ? undefined : 'your key may only read this namespace'}
        >
          {busy ? 'Saving…' : 'Save'}
        </button>
        <button type="button" onClick={onDone}>
          Cancel
        </button>
      </div>
    </section>
  );
}

export default function Templates({ me }: { me: Me }) {
  const data = usePoll(
    async () => {
      // Built-in templates appear in each namespace's own list, not in the list across namespaces.
      const [t, p, ...own] = await Promise.all([
        api<{ items: KObject[] }>(`${EXT_API}/sandboxtemplates`),
        api<{ items: KObject[] }>(`${EXT_API}/sandboxwarmpools`),
        ...me.namespaces.map((ns) => api<{ items: KObject[] }>(objectPath('sandboxtemplates', ns))),
      ]);
      const templates = new Map<string, KObject>();
      for (const o of [...t.items, ...own.flatMap((l) => l.items)]) templates.set(`${o.metadata.namespace}/${o.metadata.name}`, o);
      const key = (o: KObject) => `${o.metadata.namespace}/${o.metadata.name}`;
      return { templates: [...templates.values()].sort((a, b) => key(a).localeCompare(key(b))), pools: p.items };
    },
    3000,
    [],
  );
  const [editing, setEditing] = useState<Editing>();
  const ns0 = me.namespace ?? me.namespaces[0] ?? 'default';
  const edit = (kind: Kind, o: KObject) =>
    setEditing({
      kind,
      namespace: o.metadata.namespace,
      name: o.metadata.name,
      builtin: o.metadata.labels?.[LABELS.builtin] === 'true',
      text: editable({ ...o, apiVersion: o.apiVersion ?? EXTENSIONS_API_VERSION, kind }),
    });
  if (editing) return <Editor editing={editing} me={me} onDone={() => (setEditing(undefined), data.reload())} />;
  return (
    <>
      <ErrorBox error={data.error} />
      <section className="card" aria-labelledby="templates-title">
        <div className="row spread">
          <h1 id="templates-title">Templates</h1>
          <button type="button" onClick={() => setEditing({ kind: 'SandboxTemplate', namespace: ns0, text: STARTER.SandboxTemplate })}>
            New template
          </button>
        </div>
        <Table headers={['Name', 'Namespace', 'Image', 'Runtime', 'Actions']}>
          {(data.data?.templates ?? []).map((t) => {
            const pod = (t.spec?.podTemplate as { spec?: { runtimeClassName?: string; containers?: { image?: string }[] } } | undefined)?.spec;
            const builtin = t.metadata.labels?.[LABELS.builtin] === 'true';
            return (
              <tr key={`${t.metadata.namespace}/${t.metadata.name}`}>
                <th scope="row">
                  {t.metadata.name} {builtin ? <span className="badge">built in</span> : null}
                </th>
                <td>{t.metadata.namespace}</td>
                <td>{pod?.containers?.[0]?.image ?? '—'}</td>
                <td>{pod?.runtimeClassName ?? 'runc'}</td>
                <td className="actions">
                  <button type="button" onClick={() => edit('SandboxTemplate', t)}>
                    {canWrite(me, t.metadata.namespace) ? 'View / edit YAML' : 'View YAML'}
                  </button>
                  {!builtin && canWrite(me, t.metadata.namespace) ? (
                    <ConfirmButton
                      label="Delete"
                      danger
                      question={`Delete template "${t.metadata.name}"? Sandboxes made from it stay.`}
                      onConfirm={async () => (
                        await api(objectPath('sandboxtemplates', t.metadata.namespace, t.metadata.name), { method: 'DELETE' }),
                        data.reload()
                      )}
                    />
                  ) : null}
                </td>
              </tr>
            );
          })}
        </Table>
      </section>
      <section className="card" aria-labelledby="pools-title">
        <div className="row spread">
          <h2 id="pools-title">Warm pools</h2>
          <button type="button" onClick={() => setEditing({ kind: 'SandboxWarmPool', namespace: ns0, text: STARTER.SandboxWarmPool })}>
            New pool
          </button>
        </div>
        <Table headers={['Name', 'Namespace', 'Template', 'Fill level', 'State', 'Actions']}>
          {(data.data?.pools ?? []).map((p) => {
            const want = Number(p.spec?.replicas ?? 0);
            const ready = Number(p.status?.readyReplicas ?? 0);
            const c = condition(p);
            return (
              <tr key={`${p.metadata.namespace}/${p.metadata.name}`}>
                <th scope="row">{p.metadata.name}</th>
                <td>{p.metadata.namespace}</td>
                <td>{(p.spec?.sandboxTemplateRef as { name?: string } | undefined)?.name ?? '—'}</td>
                <td>
                  <meter min={0} max={Math.max(want, 1)} value={ready} aria-label={`${p.metadata.name}: ${ready} of ${want} ready`} /> {ready}/{want} ready
                </td>
                <td>{c ? `${c.reason ?? c.status}${c.message ? `: ${c.message}` : ''}` : '—'}</td>
                <td className="actions">
                  <button type="button" onClick={() => edit('SandboxWarmPool', p)}>
                    {canWrite(me, p.metadata.namespace) ? 'View / edit YAML' : 'View YAML'}
                  </button>
                  {canWrite(me, p.metadata.namespace) ? (
                    <ConfirmButton
                      label="Delete"
                      danger
                      question={`Delete warm pool "${p.metadata.name}" and its idle sandboxes?`}
                      onConfirm={async () => (
                        await api(objectPath('sandboxwarmpools', p.metadata.namespace, p.metadata.name), { method: 'DELETE' }),
                        data.reload()
                      )}
                    />
                  ) : null}
                </td>
              </tr>
            );
          })}
          {data.data && !data.data.pools.length ? (
            <tr>
              <td colSpan={6} className="muted">
                No warm pools.
              </td>
            </tr>
          ) : null}
        </Table>
      </section>
    </>
  );
}
