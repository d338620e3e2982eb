import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuntimeClassName } from '@moat/core';
import type { AgentClient } from '../agent/index.js';
import type { Usage } from '../cgroups.js';
import type { CreateOptions, DiskKind, HibernateResult, RuntimeDriver, RuntimeState, SandboxRuntimeSpec, WakeResult } from './types.js';

/** The driver methods a test can make fail (see `FakeDriver.fail`). */
export type FakeMethod =
  | 'check'
  | 'create'
  | 'destroy'
  | 'state'
  | 'pause'
  | 'resume'
  | 'hibernate'
  | 'wake'
  | 'hibernated'
  | 'setHostname'
  | 'listIds'
  | 'usage'
  | 'quiesce'
  | 'thaw';

/** What the fake keeps of one sandbox. */
export interface FakeSandbox {
  state: RuntimeState;
  /** A complete saved state is "on the host" (what `hibernated` answers). */
  checkpointed: boolean;
  spec?: SandboxRuntimeSpec;
  hostname?: string;
}

export interface FakeDriverOptions {
  /** false: `hibernate` cannot save processes and stops the sandbox with its disks, as a runtime without CRIU would. */
  checkpoint?: boolean;
  /** Where `logPath` and `writableLayer` point (the fake itself writes nothing); a folder under the system's temp dir by default. */
  root?: string;
}

/**
 * An in-memory RuntimeDriver for tests of the code above the drivers: no root, no processes, nothing on
 * disk. Each sandbox is an entry in `sandboxes`; `setState` puts one in any host state, `fail` makes a
 * method throw until `heal`, and `calls` records every call ("pause <id>"), in order. It runs no agent.
 */
export class FakeDriver implements RuntimeDriver {
  readonly sandboxes = new Map<string, FakeSandbox>();
  readonly calls: string[] = [];
  private readonly failures = new Map<FakeMethod, Error>();
  private readonly root: string;

  constructor(
    readonly name: RuntimeClassName = 'runc',
    private readonly opts: FakeDriverOptions = {},
  ) {
    this.root = opts.root ?? join(tmpdir(), 'moat-fake-driver');
  }

  /** Every later call of `method` throws `error`. */
  fail(method: FakeMethod, error: Error | string = `fake ${this.name} driver: ${method} failed`): void {
    this.failures.set(method, typeof error === 'string' ? new Error(error) : error);
  }

  /** `method` (or every method) works again. */
  heal(method?: FakeMethod): void {
    if (method) this.failures.delete(method);
    else this.failures.clear();
  }

  /** Puts the sandbox in `state` on the "host" ('missing' forgets it), as a crash or an operator would. */
  setState(id: string, state: RuntimeState): void {
    if (state === 'missing') this.sandboxes.delete(id);
    else this.sandboxes.set(id, { checkpointed: false, ...this.sandboxes.get(id), state });
  }

  async check(): Promise<void> {
    this.call('check');
  }

  async create(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<void> {
    this.call('create', spec.id);
    await this.start(spec, opts);
  }

  async destroy(id: string): Promise<void> {
    this.call('destroy', id);
    this.sandboxes.delete(id);
  }

  async state(id: string): Promise<RuntimeState> {
    this.call('state', id);
    return this.sandboxes.get(id)?.state ?? 'missing';
  }

  async pause(id: string): Promise<void> {
    this.call('pause', id);
    this.live(id).state = 'paused';
  }

  async resume(id: string): Promise<void> {
    this.call('resume', id);
    this.live(id).state = 'running';
  }

  async hibernate(id: string): Promise<HibernateResult> {
    this.call('hibernate', id);
    const s = this.sandboxes.get(id);
    if (!s || (s.state !== 'running' && s.state !== 'paused')) {
      return s?.checkpointed ? { checkpointed: true, bytes: 0 } : { checkpointed: false, reason: `the fake sandbox is ${s?.state ?? 'missing'}` };
    }
    s.state = 'stopped';
    if (this.opts.checkpoint === false) return { checkpointed: false, reason: 'the fake driver cannot save processes' };
    s.checkpointed = true;
    return { checkpointed: true, bytes: 0 };
  }

  async wake(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<WakeResult> {
    this.call('wake', spec.id);
    const restored = this.sandboxes.get(spec.id)?.checkpointed ?? false;
    await this.start(spec, opts);
    return restored ? { restored: true } : { restored: false, reason: 'no saved processes: started again on its disks' };
  }

  async hibernated(id: string): Promise<boolean> {
    this.call('hibernated', id);
    return this.sandboxes.get(id)?.checkpointed ?? false;
  }

  async setHostname(id: string, hostname: string): Promise<void> {
    this.call('setHostname', id);
    this.live(id).hostname = hostname;
  }

  async listIds(): Promise<string[]> {
    this.call('listIds');
    return [...this.sandboxes.keys()];
  }

  agent(id: string): AgentClient {
    throw new Error(`the fake ${this.name} driver runs no agent: sandbox ${id} has no exec, files or ports`);
  }

  async usage(id: string): Promise<Usage> {
    this.call('usage', id);
    return { memoryBytes: 0, cpuSeconds: 0, pids: 0 };
  }

  logPath(id: string): string {
    return join(this.root, id, 'log');
  }

  writableLayer(id: string) {
    return { image: join(this.root, id, 'disk.img') };
  }

  async quiesce<T>(id: string, _what: DiskKind, copy: () => Promise<T>): Promise<T> {
    this.call('quiesce', id);
    return copy();
  }

  async thaw(id: string): Promise<void> {
    this.call('thaw', id);
  }

  private call(method: FakeMethod, id?: string) {
    this.calls.push(id ? `${method} ${id}` : method);
    const err = this.failures.get(method);
    if (err) throw err;
  }

  private async start(spec: SandboxRuntimeSpec, opts: CreateOptions) {
    await opts.ready;
    this.sandboxes.set(spec.id, { state: 'running', checkpointed: false, spec, hostname: spec.hostname });
  }

  /** The sandbox, which must be running or paused (a real runtime fails on any other). */
  private live(id: string): FakeSandbox {
    const s = this.sandboxes.get(id);
    if (!s || (s.state !== 'running' && s.state !== 'paused')) throw new Error(`fake ${this.name} driver: sandbox ${id} is ${s?.state ?? 'missing'}`);
    return s;
  }
}
