import { Suspense, lazy, useRef, useState } from 'react';
import { LABELS, api, bytes, duration, sandboxPath, type Me, type Sandbox } from '../api.js';
import { Chart, ErrorBox, href, Phase, Table, Tabs, useNow, usePoll } from '../ui.js';
import { Files } from './files.js';
import { SandboxActions, canWrite } from './sandboxes.js';

const Terminal = lazy(() => import('./terminal.js'));

interface Sample {
  t: number;
  cpu: number;
  mem: number;
  pids: number;
}

interface EventItem {
  type: string;
  reason: string;
  message: string;
  time: string;
}

interface EgressItem {
  time: string;
  method: string;
  host: string;
  port: number;
  path?: string;
  allowed: boolean;
  reason?: string;
  status?: number;
  bytesUp?: number;
  bytesDown?: number;
}

const HISTORY = 300; // samples kept: ten minutes at one every two seconds

function Overview({ sandbox, samples }: { sandbox: Sandbox; samples: Sample[] }) {
  const events = usePoll(
    async () => (await api<{ items: EventItem[] }>(`${sandboxPath(sandbox.metadata.namespace, sandbox.metadata.name)}/events`)).items,
    5000,
    [sandbox.metadata.uid, sandbox.status.phase],
  );
  const c = sandbox.spec.podTemplate.spec.containers[0];
  const limits = c?.resources?.limits ?? {};
  const cpuPoints: { t: number; v: number }[] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    cpuPoints.push({ t: b.t, v: Math.max(0, ((b.cpu - a.cpu) / ((b.t - a.t) / 1000)) * 100) });
  }
  return (
    <div className="grid">
      <section className="card" aria-labelledby="res-title">
        <h2 id="res-title">Resource use</h2>
        <p className="muted">Sampled every 2 s while this page is open.</p>
        <div className="charts">
          <Chart label="CPU" points={cpuPoints} format={(v) => `${v.toFixed(1)}%`} />
          <Chart label="Memory" points={samples.map((s) => ({ t: s.t, v: s.mem }))} format={bytes} />
          <Chart label="Processes" points={samples.map((s) => ({ t: s.t, v: s.pids }))} format={(v) => String(Math.round(v))} />
        </div>
      </section>
      <section className="card" aria-labelledby="spec-title">
        <h2 id="spec-title">Details</h2>
        <dl className="kv">
          <dt>Image</dt>
          <dd>{c?.image ?? '—'}</dd>
          <dt>Runtime</dt>
          <dd>{sandbox.status.runtimeClassName ?? sandbox.spec.podTemplate.spec.runtimeClassName ?? 'runc'}</dd>
          <dt>Template</dt>
          <dd>{sandbox.metadata.labels?.[LABELS.template] ?? '—'}</dd>
          <dt>Limits</dt>
          <dd>
            {Object.entries(limits)
              .map(([k, v]) => `${k} ${v}`)
              .join(', ') || 'defaults'}
          </dd>
          <dt>Address</dt>
          <dd>{sandbox.status.network?.address ?? '—'}</dd>
          <dt>UID</dt>
          <dd className="mono">{sandbox.metadata.uid}</dd>
        </dl>
        <h3>Conditions</h3>
        <ul className="plain">
          {(sandbox.status.conditions ?? []).map((cd) => (
            <li key={cd.type}>
              <strong>{cd.type}</strong> {cd.status} {cd.reason ? `(${cd.reason})` : ''} <span className="muted">{cd.message}</span>
            </li>
          ))}
        </ul>
      </section>
      <section className="card wide" aria-labelledby="events-title">
        <h2 id="events-title">Events</h2>
        <ErrorBox error={events.error} />
        <Table headers={['Time', 'Type', 'Reason', 'Message']}>
          {(events.data ?? []).map((e, i) => (
            <tr key={i}>
              <td>
                <time dateTime={e.time}>{new Date(e.time).toLocaleTimeString()}</time>
              </td>
              <td>{e.type}</td>
              <td>{e.reason}</td>
              <td>{e.message}</td>
            </tr>
          ))}
        </Table>
      </section>
    </div>
  );
}

function Egress({ sandbox }: { sandbox: Sandbox }) {
  const log = usePoll(
    async () => (await api<{ items: EgressItem[] }>(`${sandboxPath(sandbox.metadata.namespace, sandbox.metadata.name)}/egress?limit=500`)).items,
    5000,
    [sandbox.metadata.uid],
  );
  return (
    <section className="card" aria-labelledby="egress-title">
      <h2 id="egress-title">Egress log</h2>
      <p className="muted">Every connection the sandbox asked its egress proxy for, newest last.</p>
      <ErrorBox error={log.error} />
      <Table headers={['Time', 'Request', 'Decision', 'Status', 'Up / down']}>
        {(log.data ?? []).map((e, i) => (
          <tr key={i}>
            <td>
              <time dateTime={e.time}>{new Date(e.time).toLocaleTimeString()}</time>
            </td>
            <td className="mono">
              {e.method} {e.host}:{e.port}
              {e.path ?? ''}
            </td>
            <td>{e.allowed ? <span className="ok">allowed</span> : <span className="bad">denied{e.reason ? `: ${e.reason}` : ''}</span>}</td>
            <td>{e.status ?? '—'}</td>
            <td>
              {bytes(e.bytesUp)} / {bytes(e.bytesDown)}
            </td>
          </tr>
        ))}
        {log.data && !log.data.length ? (
          <tr>
            <td colSpan={5} className="muted">
              No egress yet.
            </td>
          </tr>
        ) : null}
      </Table>
    </section>
  );
}

export default function SandboxDetail({ me, namespace, name, tab }: { me: Me; namespace: string; name: string; tab: string }) {
  const now = useNow();
  const samples = useRef<Sample[]>([]);
  const [, bump] = useState(0);
  const sb = usePoll(
    async () => {
      const s = await api<Sandbox>(sandboxPath(namespace, name));
      const u = s.status.resourceUsage;
      if (u) {
        samples.current = [...samples.current.slice(-HISTORY + 1), { t: Date.now(), cpu: u.cpuSeconds, mem: u.memoryBytes, pids: u.pids }];
        bump((n) => n + 1);
      }
      return s;
    },
    2000,
    [namespace, name],
  );
  const s = sb.data;
  const base = ['sandboxes', namespace, name];
  const tabs: [string, string][] = [
    ['overview', 'Overview'],
    ['terminal', 'Terminal'],
    ['files', 'Files'],
    ['egress', 'Egress'],
  ];
  if (!s) return sb.error ? <ErrorBox error={sb.error} /> : <p className="loading">Loading…</p>;
  const created = s.metadata.creationTimestamp ? Date.parse(s.metadata.creationTimestamp) : undefined;
  const running = s.status.phase === 'Running';
  return (
    <article aria-labelledby="sandbox-title">
      <p>
        <a href={href('sandboxes')}>← Sandboxes</a>
      </p>
      <div className="row spread wrap">
        <h1 id="sandbox-title">
          {name} <small className="muted">in {namespace}</small> <Phase phase={s.status.phase} />
        </h1>
        <SandboxActions me={me} sandbox={s} onChange={sb.reload} onDeleted={() => (window.location.hash = href('sandboxes'))} />
      </div>
      <p className="muted">
        {created ? `created ${duration(now - created)} ago` : ''}
        {s.spec.shutdownTime ? ` · shuts down in ${duration(Date.parse(s.spec.shutdownTime) - now)}` : ''}
      </p>
      <ErrorBox error={sb.error} />
      <Tabs tabs={tabs} current={tab} base={base} />
      {tab === 'terminal' ? (
        running && canWrite(me, namespace) ? (
          <Suspense fallback={<p className="loading">Loading the terminal…</p>}>
            <Terminal namespace={namespace} name={name} />
          </Suspense>
        ) : (
          <p className="muted">
            {canWrite(me, namespace) ? `The terminal needs a Running sandbox (this one is ${s.status.phase}).` : 'Your key may only read this sandbox.'}
          </p>
        )
      ) : tab === 'files' ? (
        running ? (
          <Files me={me} namespace={namespace} name={name} />
        ) : (
          <p className="muted">Files can be browsed while the sandbox is Running (it is {s.status.phase}).</p>
        )
      ) : tab === 'egress' ? (
        <Egress sandbox={s} />
      ) : (
        <Overview sandbox={s} samples={samples.current} />
      )}
    </article>
  );
}
