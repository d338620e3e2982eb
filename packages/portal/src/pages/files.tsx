import { useRef, useState } from 'react';
import { api, bytes, errorText, request, sandboxPath, type Me } from '../api.js';
import { ConfirmButton, ErrorBox, Field, usePoll, Table } from '../ui.js';
import { canWrite } from './sandboxes.js';

interface Entry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  mtime: string;
  target?: string;
}

const PREVIEW_LIMIT = 512 * 1024;
const join = (dir: string, name: string) => `${dir.replace(/\/+$/, '')}/${name}`;
const parent = (p: string) => p.replace(/\/[^/]*\/?$/, '') || '/';

/** The sandbox's files: list, view text, upload, download, delete. */
export function Files({ me, namespace, name }: { me: Me; namespace: string; name: string }) {
  const base = `${sandboxPath(namespace, name)}/files`;
  const [dir, setDir] = useState('/root');
  const [pathInput, setPathInput] = useState('/root');
  const [view, setView] = useState<{ path: string; text?: string; note?: string }>();
  const [error, setError] = useState<string>();
  const [status, setStatus] = useState<string>();
  const fileInput = useRef<HTMLInputElement>(null);
  const writable = canWrite(me, namespace);
  const list = usePoll(async () => (await api<{ items: Entry[] }>(`${base}/list?path=${encodeURIComponent(dir)}`)).items, 0, [dir, base]);
  const go = (p: string) => {
    setDir(p);
    setPathInput(p);
    setView(undefined);
  };
  const contentUrl = (p: string) => `${base}/content?path=${encodeURIComponent(p)}`;

  const open = async (e: Entry) => {
    setError(undefined);
    if (e.type === 'dir') return go(e.path);
    if (e.size > PREVIEW_LIMIT) return setView({ path: e.path, note: `${bytes(e.size)}: too large to show here; download it instead.` });
    try {
      const buf = new Uint8Array(await (await request(contentUrl(e.path))).arrayBuffer());
      try {
        const text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
        setView(text.includes('\u0000') ? { path: e.path, note: 'A binary file: download it to look inside.' } : { path: e.path, text });
      } catch {
        setView({ path: e.path, note: 'Not UTF-8 text: download it to look inside.' });
      }
    } catch (err) {
      setError(errorText(err));
    }
  };

  const upload = async (files: FileList | null) => {
    if (!files?.length) return;
    setError(undefined);
    try {
      for (const f of Array.from(files)) {
        setStatus(`Uploading ${f.name} (${bytes(f.size)})…`);
        await request(contentUrl(join(dir, f.name)), { method: 'PUT', body: f, headers: { 'content-type': 'application/octet-stream' } });
      }
      setStatus(`Uploaded ${Array.from(files, (f) => f.name).join(', ')} to ${dir}.`);
      list.reload();
    } catch (err) {
      setStatus(undefined);
      setError(errorText(err));
    } finally {
      if (fileInput.current) fileInput.current.value = '';
    }
  };

  return (
    <section className="card" aria-labelledby="files-title">
      <h2 id="files-title">Files</h2>
      <form
        className="row wrap"
        onSubmit={(e) => {
          e.preventDefault();
          go(pathInput.trim() || '/');
        }}
      >
        <Field label="Directory">{(id) => <input id={id} className="mono" value={pathInput} onChange={(e) => setPathInput(e.target.value)} />}</Field>
        <button type="submit">Open</button>
        <button type="button" onClick={() => go(parent(dir))} disabled={dir === '/'}>
          Up
        </button>
        <button type="button" onClick={list.reload}>
          Refresh
        </button>
        {writable ? (
          <Field label="Upload files here">
            {(id) => <input id={id} ref={fileInput} type="file" multiple onChange={(e) => void upload(e.target.files)} />}
          </Field>
        ) : null}
      </form>
      <p role="status" className="muted">
        {status}
      </p>
      <ErrorBox error={error ?? list.error} />
      <Table headers={['Name', 'Size', 'Mode', 'Modified', 'Actions']} caption={<>Contents of {dir}</>}>
        {(list.data ?? []).map((e) => (
          <tr key={e.path} data-path={e.path}>
            <th scope="row">
              <button type="button" className="link" onClick={() => void open(e)} aria-label={e.type === 'dir' ? `Open folder ${e.name}` : `View ${e.name}`}>
                {e.type === 'dir' ? '📁 ' : ''}
                {e.name}
                {e.type === 'symlink' ? ` → ${e.target ?? ''}` : ''}
              </button>
            </th>
            <td>{e.type === 'dir' ? '—' : bytes(e.size)}</td>
            <td className="mono">{e.mode}</td>
            <td>
              <time dateTime={e.mtime}>{new Date(e.mtime).toLocaleString()}</time>
            </td>
            <td className="actions">
              {e.type === 'file' ? (
                <a className="button" href={contentUrl(e.path)} download={e.name} aria-label={`Download ${e.name}`}>
                  Download
                </a>
              ) : null}
              {writable ? (
                <ConfirmButton
                  label="Delete"
                  danger
                  question={`Delete ${e.path}${e.type === 'dir' ? ' and everything under it' : ''}?`}
                  onConfirm={async () => {
                    await request(`${base}?path=${encodeURIComponent(e.path)}&recursive=${e.type === 'dir'}`, { method: 'DELETE' });
                    if (view?.path === e.path) setView(undefined);
                    list.reload();
                  }}
                />
              ) : null}
            </td>
          </tr>
        ))}
        {list.data && !list.data.length ? (
          <tr>
            <td colSpan={5} className="muted">
              Empty folder.
            </td>
          </tr>
        ) : null}
      </Table>
      {view ? (
        <section aria-labelledby="viewer-title" className="viewer">
          <div className="row spread">
            <h3 id="viewer-title" className="mono">
              {view.path}
            </h3>
            <div className="row">
              <a className="button" href={contentUrl(view.path)} download={view.path.split('/').pop()}>
                Download
              </a>
              <button type="button" onClick={() => setView(undefined)}>
                Close
              </button>
            </div>
          </div>
          {view.text !== undefined ? (
            <pre tabIndex={0} aria-label={`Contents of ${view.path}`}>
              {view.text}
            </pre>
          ) : (
            <p className="muted">{view.note}</p>
          )}
        </section>
      ) : null}
    </section>
  );
}
