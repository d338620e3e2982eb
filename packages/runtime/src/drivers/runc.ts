import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { criuErrors } from '../checkpoint/index.js';
import { run } from '../run.js';
import { OciDriver, type OciDriverOptions } from './oci.js';

export type RuncDriverOptions = OciDriverOptions & {
  /** The runc binary; `runc` by default. */
  binary?: string;
};

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

  protected async checkpoint(id: string, ck: string): Promise<string | undefined> {
    await mkdir(join(ck, 'images'));
    await mkdir(join(ck, 'work'));
    const r = await run(
      this.bin,
      [
        ...this.runtimeArgs(),
        'checkpoint',
        '--image-path',
        join(ck, 'images'),
        '--work-path',
        join(ck, 'work'),
        // The agent's listening socket and any connection through it are reached from the host by path.
        '--ext-unix-sk',
        '--tcp-established',
        '--file-locks',
        id,
      ],
      { allowFail: true },
    );
    if (r.code === 0) return undefined;
    const detail = await criuErrors(join(ck, 'work', 'dump.log'));
    const hint = /vDSO area bounds|vdso symtable/.test(detail)
      ? ' (CRIU releases before 4.1 cannot read the vDSO layout of Linux 6.13 and later, which adds a [vvar_vclock] mapping: checkpoint-restore/criu#2532)'
      : '';
    return `runc checkpoint (CRIU) failed: ${detail || (r.stderr || r.stdout).trim().split('\n').slice(-2).join(' ')}${hint}`;
  }

  protected async restore(id: string, ck: string): Promise<string | undefined> {
    const dir = this.dir(id);
    await unlink(join(dir, 'sock', 'agent.sock')).catch(() => {});
    const r = await this.detached(
      [
        ...this.runtimeArgs(),
        'restore',
        '--detach',
        '--image-path',
        join(ck, 'images'),
        '--work-path',
        join(ck, 'work'),
        '--bundle',
        join(dir, 'bundle'),
        '--ext-unix-sk',
        '--tcp-established',
        '--file-locks',
        id,
      ],
      this.logPath(id),
    );
    if (r.code === 0) return undefined;
    const detail = await criuErrors(join(ck, 'work', 'restore.log'));
    return `runc restore (CRIU) failed: ${detail || r.tail}`;
  }
}
