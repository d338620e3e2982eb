import { chown, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { criuErrors } from '../checkpoint/index.js';
import { IN_SANDBOX, type ociSpec } from '../oci/spec.js';
import { run } from '../run.js';
import { OciDriver, type OciDriverOptions } from './oci.js';

export type RuncDriverOptions = OciDriverOptions & {
  /** The runc binary; `runc` by default. */
  binary?: string;
};

/** A CRIU binary runc can be pointed at (`runc --criu`). */
export interface Criu {
  path: string;
  /** `criu --version`'s, e.g. "4.2.1". */
  version: string;
}

/** Where setup puts the CRIU it builds (scripts/setup-criu.sh): preferred, as no packaged one saves a Moat sandbox. */
export const SETUP_CRIU = '/usr/local/sbin/criu';

/** The CRIU runc is pointed at: setup's, else `criu` on PATH or in /usr/sbin (a server's PATH may lack it); undefined when none. */
export async function findCriu(): Promise<Criu | undefined> {
  const onPath = (process.env.PATH ?? '')
    .split(delimiter)
    .filter(Boolean)
    .map((dir) => join(dir, 'criu'));
  for (const path of [SETUP_CRIU, ...onPath, '/usr/sbin/criu']) {
    const r = await run(path, ['--version'], { allowFail: true }).catch(() => undefined); // not installed there
    const version = /^Version: (\S+)/m.exec(r?.stdout ?? '')?.[1];
    if (version) return { path, version };
  }
  return undefined;
}

/** Why a packaged CRIU fails on these hosts, by its error; setup's build has none of these. */
const CRIU_LIMITS: [RegExp, string][] = [
  [/vDSO area bounds|vdso symtable/, 'CRIU before 4.1 cannot read the vDSO layout of Linux 6.13 and later, checkpoint-restore/criu#2532'],
  [/Can't get 1:34 opt/, 'CRIU before 4.2 cannot save an inet socket on Linux 6.16 and later, which refuses SO_PASSSEC on it'],
  [/doesn't belong to the target user namespace/, "no CRIU release saves a user namespace that joined a network namespace owned by the host's"],
];

/**
 * The `runc` runtime class: the OCI bundle (see OciDriver) run by `runc`,
 * processes saved and restored by CRIU.
 */
export class RuncDriver extends OciDriver {
  readonly name = 'runc' as const;

  constructor(opts: RuncDriverOptions) {
    // The first runtime class: its sandboxes have the folder without a suffix.
    super(opts, opts.binary ?? 'runc', { sandboxes: 'sandboxes', state: 'runtime/runc' });
  }

  /**
   * runc hands CRIU the sandbox's `criu.conf` (annotation org.criu.config) with the options runc has no flag for:
   * - the sandbox log, the stdout and stderr of its processes, is a host file outside the sandbox's mounts, which
   *   CRIU saves as external and, on restore, takes from runc's own stdio (the log again);
   * - established TCP connections are restored closed (`tcp-close`), as after a network failure: restoring one
   *   needs TCP_REPAIR, so CAP_NET_ADMIN over the network namespace, which is the server's, not the sandbox's;
   * - no network lock: that namespace is not saved, and a lock left by a restore that failed would cut the
   *   sandbox's network after it starts again.
   */
  protected override async adjustSpec(config: ReturnType<typeof ociSpec>): Promise<void> {
    const sockDir = config.mounts.find((m) => m.destination === IN_SANDBOX.sockDir)!.source;
    const { annotations } = config as { annotations?: Record<string, string> };
    Object.assign(config, { annotations: { ...annotations, 'org.criu.config': join(dirname(sockDir), 'criu.conf') } });
  }

  /** CRIU's name of the sandbox log as its processes have it open (fd 1): `file[<mount id>:<inode>]`, both in hex. */
  private async logKey(id: string): Promise<string> {
    const { pid } = JSON.parse((await run(this.bin, [...this.runtimeArgs(), 'state', id])).stdout) as { pid: number };
    const mntId = Number(/^mnt_id:\s*(\d+)/m.exec(await readFile(`/proc/${pid}/fdinfo/1`, 'utf8'))![1]);
    const { ino } = await stat(`/proc/${pid}/fd/1`, { bigint: true });
    return `file[${mntId.toString(16)}:${ino.toString(16)}]`;
  }

  protected async checkpoint(id: string, ck: string): Promise<string | undefined> {
    const criu = await findCriu();
    if (!criu) return 'runc checkpoint needs CRIU, which is not installed: scripts/setup-criu.sh builds it';
    await mkdir(join(ck, 'images'));
    await mkdir(join(ck, 'work'));
    const log = await this.logKey(id).catch(() => undefined); // no stdout: nothing outside to name
    if (log) await writeFile(join(ck, 'log-key'), log);
    await writeCriuConf(this.dir(id), log && `external ${log}`);
    const r = await run(
      this.bin,
      [
        ...this.runtimeArgs(),
        '--criu',
        criu.path,
        'checkpoint',
        '--image-path',
        join(ck, 'images'),
        '--work-path',
        join(ck, 'work'),
        // The agent's listening socket and any connection through it are reached from the host by path.
        '--ext-unix-sk',
        '--file-locks',
        id,
      ],
      { allowFail: true },
    );
    if (r.code === 0) return undefined;
    const detail = await criuErrors(join(ck, 'work', 'dump.log'));
    // A CRIU other than setup's fails on these hosts, sometimes before it logs why (3.17 on Linux 6.13).
    const limit = CRIU_LIMITS.find(([error]) => error.test(detail))?.[1] ?? 'it is not the CRIU setup builds';
    const hint = criu.path === SETUP_CRIU ? '' : ` (${criu.path}: ${limit}; scripts/setup-criu.sh builds one that can save a sandbox)`;
    return `runc checkpoint (CRIU ${criu.version}) failed: ${detail || (r.stderr || r.stdout).trim().split('\n').slice(-2).join(' ')}${hint}`;
  }

  protected async restore(id: string, ck: string): Promise<string | undefined> {
    const dir = this.dir(id);
    const criu = await findCriu();
    if (!criu) return 'runc restore needs CRIU, which is not installed';
    await unlink(join(dir, 'sock', 'agent.sock')).catch(() => {});
    // runc gives CRIU the restore's stdio, the sandbox log opened anew: fd 1 there. The restored processes open it
    // again (by /proc/self/fd) as the sandbox's root, who must own it, as it owns the socket folder.
    const log = await readFile(join(ck, 'log-key'), 'utf8').catch(() => undefined);
    await writeCriuConf(dir, log && `inherit-fd fd[1]:${log}`);
    if (log) {
      const root = await stat(join(dir, 'sock'));
      await chown(this.logPath(id), root.uid, root.gid);
    }
    const r = await this.detached(
      [
        ...this.runtimeArgs(),
        '--criu',
        criu.path,
        'restore',
        '--detach',
        '--image-path',
        join(ck, 'images'),
        '--work-path',
        join(ck, 'work'),
        '--bundle',
        join(dir, 'bundle'),
        '--ext-unix-sk',
        '--file-locks',
        id,
      ],
      this.logPath(id),
    );
    if (r.code === 0) return undefined;
    const detail = await criuErrors(join(ck, 'work', 'restore.log'));
    return `runc restore (CRIU ${criu.version}) failed: ${detail || r.tail}`;
  }
}

/** The sandbox's `criu.conf` for the next checkpoint or restore (see adjustSpec). */
function writeCriuConf(dir: string, log: string | undefined) {
  return writeFile(join(dir, 'criu.conf'), [log, 'tcp-close', 'network-lock skip'].filter(Boolean).join('\n') + '\n');
}
