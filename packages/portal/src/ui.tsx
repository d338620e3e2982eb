import { useCallback, useEffect, useId, useRef, useState, type ReactNode, type TableHTMLAttributes } from 'react';
import { errorText } from './api.js';

/** The route is the URL's hash (`#/sandboxes/ns/name`), so no server path is ever shadowed. */
export function useRoute(): string[] {
  const parse = () => window.location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

export const href = (...parts: string[]) => `#/${parts.map(encodeURIComponent).join('/')}`;

/** Calls `load` now and every `ms` while the page is visible; `reload` calls it at once. */
export function usePoll<T>(load: () => Promise<T>, ms: number, deps: unknown[]): { data?: T; error?: string; reload: () => void } {
  const [state, setState] = useState<{ data?: T; error?: string }>({});
  const loadRef = useRef(load);
  loadRef.current = load;
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      let failed = false;
      try {
        const data = await loadRef.current();
        if (live) setState({ data });
      } catch (err) {
        failed = true;
        if (live) setState((s) => ({ ...s, error: errorText(err) }));
      }
      // Slower while the tab is hidden or the call fails (a refusal is audited: no need to repeat it every 2 s).
      if (live && ms > 0) timer = setTimeout(run, document.hidden || failed ? ms * 5 : ms);
    };
    void run();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [...deps, tick, ms]);
  return { ...state, reload };
}

export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export function ErrorBox({ error }: { error?: string | undefined }) {
  if (!error) return null;
  return (
    <p className="error" role="alert">
      {error}
    </p>
  );
}

export function Field({ label, children, hint }: { label: string; children: (id: string) => ReactNode; hint?: string }) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children(id)}
      {hint ? <small className="hint">{hint}</small> : null}
    </div>
  );
}

/** An action a form or button runs: busy while it runs, its error kept until the next try (or `reset`). */
export function useAction(): { busy: boolean; error: string | undefined; run: (act: () => Promise<void>) => Promise<void>; reset: () => void } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const run = useCallback(async (act: () => Promise<void>) => {
    setBusy(true);
    setError(undefined);
    try {
      await act();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }, []);
  const reset = useCallback(() => setError(undefined), []);
  return { busy, error, run, reset };
}

/** A button that asks first, in a modal dialog (focus moves in, Escape cancels). */
export function ConfirmButton(props: {
  label: string;
  question: string;
  confirm?: string;
  danger?: boolean;
  disabled?: boolean;
  title?: string;
  onConfirm: () => Promise<void> | void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const { busy, error, run, reset } = useAction();
  const titleId = useId();
  return (
    <>
      <button
        type="button"
        className={props.danger ? 'danger' : ''}
        disabled={props.disabled || busy}
        title={props.title}
        onClick={() => ref.current?.showModal()}
      >
        {props.label}
      </button>
      <dialog ref={ref} aria-labelledby={titleId} onClose={reset}>
        <form
          method="dialog"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await props.onConfirm();
              ref.current?.close();
            });
          }}
        >
          <p id={titleId}>{props.question}</p>
          <ErrorBox error={error} />
          <div className="row">
            <button type="submit" className={props.danger ? 'danger' : 'primary'} disabled={busy} autoFocus>
              {busy ? 'Working…' : (props.confirm ?? props.label)}
            </button>
            <button type="button" onClick={() => ref.current?.close()}>
              Cancel
            </button>
          </div>
        </form>
      </dialog>
    </>
  );
}

/** A small line chart over time; `format` labels the latest and highest values. */
export function Chart({ label, points, format, max }: { label: string; points: { t: number; v: number }[]; format: (v: number) => string; max?: number }) {
  const w = 320;
  const h = 90;
  if (points.length < 2) {
    return (
      <figure className="chart">
        <figcaption>{label}</figcaption>
        <p className="muted">Collecting samples…</p>
      </figure>
    );
  }
  const t0 = points[0]!.t;
  const t1 = points[points.length - 1]!.t;
  const top = Math.max(max ?? 0, ...points.map((p) => p.v), 1e-9);
  const xy = points.map((p) => `${(((p.t - t0) / Math.max(t1 - t0, 1)) * w).toFixed(1)},${(h - (p.v / top) * (h - 4) - 2).toFixed(1)}`).join(' ');
  const last = points[points.length - 1]!.v;
  return (
    <figure className="chart">
      <figcaption>
        {label}: <strong>{format(last)}</strong> <span className="muted">(peak {format(Math.max(...points.map((p) => p.v)))})</span>
      </figcaption>
      <svg
        viewBox={`0 0 ${w} ${h}`}
        preserveAspectRatio="none"
        role="img"
        aria-label={`${label} over the last ${Math.round((t1 - t0) / 1000)} seconds, now ${format(last)}`}
      >
        <polyline points={`0,${h} ${xy} ${w},${h}`} className="area" />
        <polyline points={xy} className="line" />
      </svg>
    </figure>
  );
}

export function Phase({ phase }: { phase: string }) {
  return <span className={`phase phase-${phase.toLowerCase()}`}>{phase}</span>;
}

export function Tabs({ tabs, current, base }: { tabs: [string, string][]; current: string; base: string[] }) {
  return (
    <nav className="tabs" aria-label="Sections">
      {tabs.map(([id, label]) => (
        <a key={id} href={href(...base, id)} aria-current={current === id ? 'page' : undefined}>
          {label}
        </a>
      ))}
    </nav>
  );
}

/** A table that scrolls sideways on small screens: column headers, an optional caption for screen readers, rows as children. */
export function Table({
  headers,
  caption,
  children,
  ...rest
}: { headers: string[]; caption?: ReactNode; children: ReactNode } & TableHTMLAttributes<HTMLTableElement>) {
  return (
    <div className="table-wrap">
      <table {...rest}>
        {caption ? <caption className="sr-only">{caption}</caption> : null}
        <thead>
          <tr>
            {headers.map((h) => (
              <th scope="col" key={h}>
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
