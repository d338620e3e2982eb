import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { sandboxPath } from '../api.js';

type State = { kind: 'connecting' } | { kind: 'open' } | { kind: 'exited'; text: string } | { kind: 'error'; text: string };

/**
 * A shell in the sandbox: xterm.js over the exec WebSocket in TTY mode
 * (binary frames tagged 0 stdin / 1 stdout / 2 stderr; text frames for
 * resize and status). The session cookie authenticates the upgrade.
 */
export default function Terminal({ namespace, name }: { namespace: string; name: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<State>({ kind: 'connecting' });
  const [generation, setGeneration] = useState(0);
  const [screenReader, setScreenReader] = useState(false);
  const termRef = useRef<XTerm>(undefined);

  useEffect(() => {
    const term = new XTerm({
      cursorBlink: true,
      convertEol: false,
      fontSize: 14,
      scrollback: 5000,
      screenReaderMode: false,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
    });
    termRef.current = term;
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el.current!);
    fit.fit();
    setState({ kind: 'connecting' });
    const proto = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${window.location.host}${sandboxPath(namespace, name)}/exec/ws`);
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    const frame = (tag: number, data: Uint8Array) => {
      const b = new Uint8Array(data.length + 1);
      b[0] = tag;
      b.set(data, 1);
      return b;
    };
    ws.onopen = () => {
      ws.send(
        JSON.stringify({
          command: ['/bin/sh', '-c', 'if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi'],
          env: { TERM: 'xterm-256color' },
          tty: true,
          rows: term.rows,
          cols: term.cols,
        }),
      );
      setState({ kind: 'open' });
      term.focus();
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      if (typeof ev.data !== 'string') {
        const b = new Uint8Array(ev.data);
        if (b[0] === 1 || b[0] === 2) term.write(b.subarray(1));
        return;
      }
      const msg = JSON.parse(ev.data) as { type: string; exitCode?: number; signal?: string | null; message?: string };
      if (msg.type === 'exit') setState({ kind: 'exited', text: `The shell exited${msg.signal ? ` on ${msg.signal}` : ` with code ${msg.exitCode}`}.` });
      else if (msg.type === 'error') setState({ kind: 'error', text: msg.message ?? 'the exec failed' });
    };
    ws.onclose = (ev) =>
      setState((s) => (s.kind === 'open' || s.kind === 'connecting' ? { kind: 'error', text: `Disconnected${ev.reason ? `: ${ev.reason}` : ''}.` } : s));
    ws.onerror = () => setState({ kind: 'error', text: 'The terminal connection failed (is the sandbox Running, and may your key exec in it?).' });
    const input = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(frame(0, enc.encode(d))));
    const binary = term.onBinary(
      (d) =>
        ws.readyState === WebSocket.OPEN &&
        ws.send(
          frame(
            0,
            Uint8Array.from(d, (c) => c.charCodeAt(0)),
          ),
        ),
    );
    const resized = term.onResize(({ rows, cols }) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: 'resize', rows, cols })));
    const observer = new ResizeObserver(() => fit.fit());
    observer.observe(el.current!);
    return () => {
      observer.disconnect();
      input.dispose();
      binary.dispose();
      resized.dispose();
      ws.close();
      term.dispose();
    };
  }, [namespace, name, generation]);
  useEffect(() => {
    if (termRef.current) termRef.current.options.screenReaderMode = screenReader;
  }, [screenReader, generation, state.kind]);

  return (
    <section className="card terminal-card" aria-labelledby="term-title">
      <div className="row spread wrap">
        <h2 id="term-title">Terminal</h2>
        <div className="row wrap">
          <span role="status" className="muted" data-terminal-state={state.kind}>
            {state.kind === 'connecting' ? 'Connecting…' : state.kind === 'open' ? 'Connected' : state.text}
          </span>
          <label className="check">
            <input type="checkbox" checked={screenReader} onChange={(e) => setScreenReader(e.target.checked)} /> Screen reader mode
          </label>
          <button type="button" onClick={() => setGeneration((g) => g + 1)}>
            {state.kind === 'open' ? 'Restart shell' : 'Reconnect'}
          </button>
        </div>
      </div>
      <div className="terminal" ref={el} role="region" aria-label={`Shell in sandbox ${name}`} />
    </section>
  );
}
