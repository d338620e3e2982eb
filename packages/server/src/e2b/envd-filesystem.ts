import { posix } from 'node:path';
import { Type } from '@sinclair/typebox';
import { AgentError, type SandboxAgent, type Entry } from '@moat/runtime';
import { ConnectError, ServerStream, deadlineMs } from './connect-rpc.js';
import type { EnvdRoutes } from './envd-types.js';

const Path = Type.String({ minLength: 1, maxLength: 4096 });
const PathRequest = Type.Object({ path: Path }, { additionalProperties: false });
const ListDirRequest = Type.Object({ path: Path, depth: Type.Optional(Type.Integer({ minimum: 0, maximum: 32 })) }, { additionalProperties: false });
const MoveRequest = Type.Object({ source: Path, destination: Path }, { additionalProperties: false });
const WatchDirRequest = Type.Object(
  { path: Path, recursive: Type.Optional(Type.Boolean()), includeEntry: Type.Optional(Type.Boolean()), allowNetworkMounts: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);

const TYPE = { file: 'FILE_TYPE_FILE', dir: 'FILE_TYPE_DIRECTORY', symlink: 'FILE_TYPE_SYMLINK', other: 'FILE_TYPE_UNSPECIFIED' } as const;
/** The accounts Moat's images have; other owners are shown by number. */
const NAMES: Record<number, string> = { 0: 'root', 1000: 'user' };
/** How often a watched directory is compared with its last listing (the agent has no inotify relay). */
const WATCH_POLL_MS = 200;
const WATCH_KEEPALIVE_MS = 30_000;

/** `-rw-r--r--`, as Go's FileMode prints it (envd's `permissions`). */
function permissions(e: Entry): string {
  const kind = e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'L' : '-';
  return kind + [...'rwxrwxrwx'].map((c, i) => (e.mode & (0o400 >> i) ? c : '-')).join('');
}

/** envd's EntryInfo. */
export function entryInfo(e: Entry, path = e.path) {
  return {
    name: posix.basename(path) || '/',
    type: TYPE[e.type],
    path,
    size: String(e.size),
    mode: e.mode & 0o7777,
    permissions: permissions(e),
    owner: NAMES[e.uid] ?? String(e.uid),
    group: NAMES[e.gid] ?? String(e.gid),
    modifiedTime: e.mtime.toISOString(),
    ...(e.target !== undefined ? { symlinkTarget: e.target } : {}),
  };
}

async function listTree(agent: SandboxAgent, dir: string, depth: number, user: string): Promise<Entry[]> {
  const out: Entry[] = [];
  for (const e of await agent.list(dir, { user })) {
    const path = posix.join(dir, e.name);
    out.push({ ...e, path });
    if (e.type === 'dir' && depth > 1) out.push(...(await listTree(agent, path, depth - 1, user)));
  }
  return out;
}

async function exists(agent: SandboxAgent, path: string, user: string): Promise<boolean> {
  return agent.stat(path, { user }).then(
    () => true,
    (err: unknown) => {
      if (err instanceof AgentError && err.code === 'ENOENT') return false;
      throw err;
    },
  );
}

/** envd's filesystem service on the sandbox agent's file operations. */
export function filesystemService(routes: EnvdRoutes) {
  routes.unary('filesystem.Filesystem/Stat', PathRequest, async (t, body) => {
    const path = t.resolve(body.path);
    return { entry: entryInfo(await t.agent.stat(path, { user: t.user }), path) };
  });

  routes.unary('filesystem.Filesystem/ListDir', ListDirRequest, async (t, body) => {
    const path = t.resolve(body.path);
    const entries = await listTree(t.agent, path, body.depth || 1, t.user);
    return { entries: entries.map((e) => entryInfo(e)) };
  });

  routes.unary('filesystem.Filesystem/MakeDir', PathRequest, async (t, body) => {
    const path = t.resolve(body.path);
    if (await exists(t.agent, path, t.user)) throw new ConnectError('already_exists', `${path} already exists`);
    return { entry: entryInfo(await t.agent.mkdir(path, { parents: true, user: t.user }), path) };
  });

  routes.unary('filesystem.Filesystem/Move', MoveRequest, async (t, body) => {
    const from = t.resolve(body.source, 'source');
    const to = t.resolve(body.destination, 'destination');
    const parent = posix.dirname(to);
    if (!(await exists(t.agent, parent, t.user))) await t.agent.mkdir(parent, { parents: true, user: t.user });
    return { entry: entryInfo(await t.agent.rename(from, to, { user: t.user }), to) };
  });

  routes.unary('filesystem.Filesystem/Remove', PathRequest, async (t, body) => {
    await t.agent.remove(t.resolve(body.path), { recursive: true, user: t.user });
    return {};
  });

  routes.stream('filesystem.Filesystem/WatchDir', WatchDirRequest, async (t, body, stream, req) => {
    const dir = t.resolve(body.path);
    const depth = body.recursive ? 32 : 1;
    const entry = await t.agent.stat(dir, { user: t.user });
    if (entry.type !== 'dir') throw new ConnectError('invalid_argument', `${dir} is not a directory`);
    const snapshot = async () =>
      new Map((await listTree(t.agent, dir, depth, t.user)).map((e) => [posix.relative(dir, e.path), `${e.type}:${e.size}:${e.mtime.getTime()}`]));
    let last = await snapshot();
    // WatchDirResponse's oneof sits on the message itself: `{"start":{}}`, not under `event` as in the process service.
    stream.send({ start: {} });
    watch(stream, req.headers, async () => {
      const now = await snapshot();
      const event = (name: string, type: string) => stream.send({ filesystem: { name, type } });
      for (const [name, sig] of now) {
        const before = last.get(name);
        if (before === undefined) event(name, 'EVENT_TYPE_CREATE');
        else if (before !== sig) event(name, 'EVENT_TYPE_WRITE');
      }
      for (const name of last.keys()) if (!now.has(name)) event(name, 'EVENT_TYPE_REMOVE');
      last = now;
    });
  });
}

/** Polls until the client leaves, its deadline passes or the directory goes. */
function watch(stream: ServerStream, headers: Record<string, string | string[] | undefined>, poll: () => Promise<void>) {
  const deadline = deadlineMs(headers['connect-timeout-ms']);
  const started = Date.now();
  let lastSent = started;
  const tick = async () => {
    if (stream.closed) return;
    if (deadline && Date.now() - started >= deadline) return stream.end(new ConnectError('deadline_exceeded', `the watch's deadline of ${deadline} ms passed`));
    try {
      await poll();
    } catch (err) {
      return stream.end(err);
    }
    if (Date.now() - lastSent > WATCH_KEEPALIVE_MS) {
      stream.send({ keepalive: {} });
      lastSent = Date.now();
    }
    setTimeout(() => void tick(), WATCH_POLL_MS);
  };
  setTimeout(() => void tick(), WATCH_POLL_MS);
}
