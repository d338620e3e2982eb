import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AgentClient, defaultInitBinary, type SandboxAgent } from '@moat/runtime';
import type { Kube } from './kube.js';
import { ExecFailure, PodExecStream, execOnce, type PodRef } from './pod-exec.js';
import { PodMux } from './pod-mux.js';

const AGENT_DIR = '/tmp/.moat';
/** How often a channel's apiserver is pinged, so one that died silently is noticed. */
const KEEPALIVE_MS = 30_000;

/**
 * Moat's agent (moat-init) inside pods, reached through pods/exec: one `moat-init --mux` per pod, started on first
 * use, carries every operation as its own connection of the same protocol as on one host, so exec, files, PTYs
 * and port dials behave the same on any image with a shell (docs/kubernetes.md says why this and not a sidecar
 * or a listener in the pod).
 *
 * The binary is copied into the container on first use, keyed by its hash so an upgraded Moat brings its own:
 * the channel first starts it, and only if the kubelet says it is missing is it installed and started again, so
 * a pod costs one extra exec once, and warm pool members none after their install.
 */
export class PodAgents {
  /** The channel of each pod, by `key`. */
  private readonly channels = new Map<string, PodMux>();

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

  /** The agent of one pod's container; `key` names the pod (its sandbox's uid and its name), whose channel it shares. */
  agent(ref: PodRef, key: string): SandboxAgent {
    return new AgentClient(({ allowHalfOpen }) => this.channel(ref, key).open(allowHalfOpen), { connectTimeoutMs: 20_000 });
  }

  /** Starts a pod's channel before anyone uses it, held open until its first use (a warm pool member, for its claim). */
  async warm(ref: PodRef, key: string): Promise<void> {
    await this.channel(ref, key, true).ready;
  }

  /** Closes every channel (their agents exit). */
  close(): void {
    for (const c of this.channels.values()) c.close();
  }

  private channel(ref: PodRef, key: string, hold = false): PodMux {
    let c = this.channels.get(key);
    if (!c || c.closed) {
      const mux = new PodMux(
        () => new PodExecStream(this.kube, ref, [this.path, '--mux'], { allowHalfOpen: true, keepAliveMs: KEEPALIVE_MS }),
        () => this.install(ref),
        hold,
      );
      mux.once('close', () => this.channels.get(key) === mux && this.channels.delete(key));
      this.channels.set(key, mux);
      c = mux;
    }
    return c;
  }

  /** Puts the agent into the container; `head -c` so a v4 exec (no stdin EOF) works too. */
  private async install(ref: PodRef): Promise<void> {
    const script =
      `set -e; umask 077; mkdir -p ${AGENT_DIR}; t=${AGENT_DIR}/.in.$$; ` + `head -c ${this.binary.length} > "$t"; chmod 700 "$t"; mv -f "$t" ${this.path}`;
    const r = await execOnce(this.kube, ref, ['sh', '-c', script], this.binary).catch((err: Error) => {
      const why = err instanceof ExecFailure && err.notFound ? 'the image has no /bin/sh (Moat copies its agent in with sh and head)' : err.message;
      throw new Error(`cannot install Moat's agent into pod ${ref.namespace}/${ref.pod}: ${why}`);
    });
    if (r.exitCode !== 0) throw new Error(`cannot install Moat's agent into pod ${ref.namespace}/${ref.pod}: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
  }
}
