import { StrictMode, Suspense, lazy, useEffect, useState, type FormEvent } from 'react';
import { createRoot } from 'react-dom/client';
import { errorText, session, whenSignedOut, type Me } from './api.js';
import { SandboxList } from './pages/sandboxes.js';
import { ErrorBox, Field, href, useAction, useRoute } from './ui.js';
import './styles.css';

// Pages off the first screen load on demand (the terminal's xterm.js and the YAML parser with them).
const SandboxDetail = lazy(() => import('./pages/sandbox-detail.js'));
const Templates = lazy(() => import('./pages/templates.js'));
const Audit = lazy(() => import('./pages/audit.js'));
const Admin = lazy(() => import('./pages/admin.js'));

function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [key, setKey] = useState('');
  const { busy, error, run } = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void run(async () => onSignedIn(await session.signIn(key.trim())));
  };
  return (
    <main className="signin">
      <h1>Moat</h1>
      <form onSubmit={submit} aria-label="Sign in">
        <Field label="API key" hint="The key `moat up` printed, or one from `moat keys create`. It is sent once; the browser keeps only a session cookie.">
          {(id) => (
            <input
              id={id}
              name="apiKey"
              type="password"
              autoComplete="current-password"
              required
              value={key}
              onChange={(e) => setKey(e.target.value)}
              autoFocus
            />
          )}
        </Field>
        <ErrorBox error={error} />
        <button className="primary" type="submit" disabled={busy || !key.trim()}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}

function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [error, setError] = useState<string>();
  const route = useRoute();
  useEffect(() => {
    whenSignedOut(() => setMe(null));
    session.current().then(
      (m) => setMe(m ?? null),
      (err) => setError(errorText(err)),
    );
  }, []);

  if (me === undefined) return error ? <ErrorBox error={error} /> : <p className="loading">Loading…</p>;
  if (me === null) return <SignIn onSignedIn={setMe} />;

  const section = route[0] ?? 'sandboxes';
  const nav: [string, string][] = [
    ['sandboxes', 'Sandboxes'],
    ['templates', 'Templates & pools'],
    ['audit', 'Audit'],
    ...(me.role === 'admin' && !me.agent ? ([['admin', 'Admin']] as [string, string][]) : []),
  ];
  let page;
  if (section === 'sandboxes' && route.length >= 3) page = <SandboxDetail me={me} namespace={route[1]!} name={route[2]!} tab={route[3] ?? 'overview'} />;
  else if (section === 'templates') page = <Templates me={me} />;
  else if (section === 'audit') page = <Audit me={me} />;
  else if (section === 'admin') page = <Admin me={me} />;
  else page = <SandboxList me={me} />;

  return (
    <>
      <a className="skip" href="#main" onClick={(e) => (e.preventDefault(), document.getElementById('main')?.focus())}>
        Skip to content
      </a>
      <header className="top">
        <a className="brand" href={href('sandboxes')}>
          Moat
        </a>
        <nav aria-label="Main">
          {nav.map(([id, label]) => (
            <a key={id} href={href(id)} aria-current={section === id ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <div className="who">
          <span title={`key ${me.keyId}`}>
            {me.user}
            {me.agent ? ` / ${me.agent}` : ''} <span className="badge">{me.role}</span>
          </span>
          <button type="button" onClick={() => session.signOut().then(() => setMe(null))}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Suspense fallback={<p className="loading">Loading…</p>}>{page}</Suspense>
      </main>
    </>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
