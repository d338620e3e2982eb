import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Duplex } from 'node:stream';
import { AgentClient, defaultInitBinary, type SandboxAgent } from '@moat/runtime';
import type { Kube } from './kube.js';
import { ExecFailure, PodExecStream, execOnce, type PodRef } from './pod-exec.js';

/** What is replayed into a fresh exec after installing the agent; a request and a little stdin fit many times over. */
const REPLAY_LIMIT = 1 << 20;
const AGENT_DIR = '/tmp/.moat';

/**
 * Moat's agent (moat-init) inside pods, reached through pods/exec: each operation runs `moat-init --stdio` in the
 * pod's container and speaks the same protocol as on one host, so exec, files, PTYs and port dials behave the same
 * on any image with a shell (docs/kubernetes.md says why this and not a sidecar or a listener in the pod).
 *
 * The binary is copied into the container on first use, keyed by its hash so an upgraded Moat brings its own:
 * an operation first tries it, and only if the kubelet says it is missing is it installed and the operation
 * replayed (nothing ran yet), so a pod costs one extra exec once, and warm pool members none after their install.
 */
export class PodAgents {
  private readonly installs = new Map<string, Promise<void>>();

  private constructor(
    private readonly kube: Kube,
    private readonly binary: Buffer,
    /** Where the agent lives in a container. */
    readonly path: string,
  ) {}

  static async open(kube: Kube, binaryPath = defaultInitBinary()): Promise<PodAgents> {
    const binary = await readFile(binaryPath).catch((err: Error) => {
      throw new Error(`cannot read moat-init at ${binaryPath} (run make -C packages/agent): ${err.message}`);
    });
    const hash = createHash('sha256').update(binary).digest('hex').slice(0, 16);
    return new PodAgents(kube, binary, `${AGENT_DIR}/moat-init-${hash}`);
  }

  /** The agent of one pod's container; `key` names the pod for the install (concurrent first calls install once). */
  agent(ref: PodRef, key: string): SandboxAgent {
    return new AgentClient(({ allowHalfOpen }) => new AgentStream(this, ref, key, allowHalfOpen), { connectTimeoutMs: 20_000 });
  }

  /** Puts the agent into the container (one install per pod at a time); `head -c` so a v4 exec (no stdin EOF) works too. */
  install(ref: PodRef, key: string): Promise<void> {
    let p = this.installs.get(key);
    if (!p) {
      const script =
        `set -e; umask 077; mkdir -p ${AGENT_DIR}; t=${AGENT_DIR}/.in.$$; ` + `head -c ${this.binary.length} > "$t"; chmod 700 "$t"; mv -f "$t" ${this.path}`;
      p = execOnce(this.kube, ref, ['sh', '-c', script], this.binary).then(
        (r) => {
          if (r.exitCode !== 0) throw new Error(r.stderr.trim() || `exit ${r.exitCode}`);
        },
        (err: Error) => {
          throw new Error(err instanceof ExecFailure && err.notFound ? 'the image has no /bin/sh (Moat copies its agent in with sh and head)' : err.message);
        },
      );
      p = p
        .catch((err: Error) => {
          throw new Error(`cannot install Moat's agent into pod ${ref.namespace}/${ref.pod}: ${err.message}`);
        })
        .finally(() => this.installs.delete(key));
      this.installs.set(key, p);
    }
    return p;
  }

  open(ref: PodRef, allowHalfOpen: boolean): PodExecStream {
    return new PodExecStream(this.kube, ref, [this.path, '--stdio'], { allowHalfOpen });
  }
}

/**
 * One agent connection. Until the agent's first byte arrives, what was written is kept: if the exec failed
 * because the agent is not in the container yet, it is installed and a new exec gets the same bytes.
 */
class AgentStream extends Duplex {
  private inner!: PodExecStream;
  private replay: Buffer[] | null = [];
  private replayBytes = 0;
  private retried = false;
  private ended = false;

  constructor(
    private readonly agents: PodAgents,
    private readonly ref: PodRef,
    private readonly key: string,
    allowHalfOpen: boolean,
  ) {
    super({ allowHalfOpen });
    this.attach(agents.open(ref, allowHalfOpen));
  }

  private attach(inner: PodExecStream) {
    this.inner = inner;
    inner.once('connect', () => this.emit('connect'));
    inner.on('data', (c: Buffer) => {
      this.replay = null; // the agent runs: nothing will be replayed
      if (!this.push(c)) inner.pause();
    });
    inner.on('end', () => this.push(null));
    inner.on('error', (err: Error) => {
      if (err instanceof ExecFailure && err.notFound && this.replay && !this.retried) return this.reinstall();
      this.destroy(err);
    });
  }

  private reinstall() {
    this.retried = true;
    const replay = this.replay ?? [];
    this.agents.install(this.ref, this.key).then(
      () => {
        if (this.destroyed) return;
        this.attach(this.agents.open(this.ref, this.allowHalfOpen));
        for (const b of replay) this.inner.write(b);
        if (this.ended) this.inner.end();
      },
      (err: Error) => this.destroy(err),
    );
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.replay) {
      this.replayBytes += chunk.length;
      if (this.replayBytes <= REPLAY_LIMIT) this.replay.push(chunk);
      else this.replay = null;
    }
    if (this.inner.destroyed) return cb(); // reinstalling: the bytes are in the replay
    this.inner.write(chunk, (err) => cb(err ?? null));
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.ended = true;
    if (!this.inner.destroyed) this.inner.end();
    cb();
  }

  override _read(): void {
    this.inner.resume();
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.inner.destroy();
    cb(err);
  }
}
