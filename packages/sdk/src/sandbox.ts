import { collectExec, execStream, toArgv, type Command, type ExecOptions } from './exec.js';
import { Files } from './files.js';
import type { HttpClient } from './http.js';
import type { ResourceClient, WaitOptions } from './resources.js';
import { Process, type SpawnOptions } from './spawn.js';
import { CLAIM_LABEL, CONDITION, type EgressRecord, type SandboxEvent, type ExecEvent, type ExecResult, type SandboxResource } from './types.js';

/** A handle on one sandbox. `resource` is the last Sandbox object the server returned. */
export class Sandbox {
  readonly files: Files;

  constructor(
    private readonly http: HttpClient,
    private readonly client: ResourceClient<SandboxResource>,
    public resource: SandboxResource,
    /** To delete a claimed sandbox through its claim. */
    private readonly claims?: ResourceClient,
  ) {
    this.files = new Files(http, this.path);
  }

  get name(): string {
    return this.resource.metadata.name;
  }

  private get path(): string {
    return this.client.itemPath(this.name);
  }

  async refresh(): Promise<this> {
    this.resource = await this.client.get(this.name);
    return this;
  }

  async waitReady(opts: Omit<WaitOptions, 'condition'> = {}): Promise<this> {
    this.resource = await this.client.wait(this.name, { ...opts, condition: CONDITION.Ready });
    return this;
  }

  /** Run a command to completion. A string runs with `/bin/sh -c`. */
  exec(cmd: Command, opts: ExecOptions = {}): Promise<ExecResult> {
    const { onStdout, onStderr, ...request } = opts;
    return collectExec(execStream(this.http, this.path, cmd, request), { onStdout, onStderr });
  }

  /** The raw event stream of a command, with output as bytes (for byte-exact relaying). */
  execStream(cmd: Command, opts: Omit<ExecOptions, 'onStdout' | 'onStderr'> = {}): AsyncGenerator<ExecEvent> {
    return execStream(this.http, this.path, cmd, opts);
  }

  /** Start an interactive process (stdin, TTY, signals) over a WebSocket. */
  spawn(cmd: Command, opts: SpawnOptions = {}): Process {
    return new Process(this.http.wsUrl(`${this.path}/exec/ws`), this.http.authHeaders(), this.http.baseUrl, toArgv(cmd), opts);
  }

  /** Freeze every process (memory stays allocated). Exec and file calls resume the sandbox. */
  async pause(): Promise<this> {
    this.resource = await this.http.json<SandboxResource>('POST', `${this.path}/pause`);
    return this;
  }

  async resume(): Promise<this> {
    this.resource = await this.http.json<SandboxResource>('POST', `${this.path}/resume`);
    return this;
  }

  /**
   * Save every process and its memory to disk and free the memory. Where the
   * runtime cannot checkpoint the workload the sandbox is stopped with its disks
   * kept instead (the `Hibernated` condition says which). Exec, file calls and
   * port connections wake it.
   */
  async hibernate(): Promise<this> {
    this.resource = await this.http.json<SandboxResource>('POST', `${this.path}/hibernate`);
    return this;
  }

  /** Restore a hibernated sandbox: the same processes with the same memory (or a fresh start on its disks). */
  async wake(): Promise<this> {
    this.resource = await this.http.json<SandboxResource>('POST', `${this.path}/wake`);
    return this;
  }

  /** Set when the sandbox shuts down: `ttlSeconds` from now, or at `shutdownTime` (a claimed sandbox: its claim). */
  async extend(when: { ttlSeconds: number } | { shutdownTime: string }): Promise<this> {
    this.resource = await this.http.json<SandboxResource>('POST', `${this.path}/extend`, { json: when });
    return this;
  }

  /** What happened to the sandbox (started, claimed, paused...), oldest first. */
  async events(): Promise<SandboxEvent[]> {
    return (await this.http.json<{ items: SandboxEvent[] }>('GET', `${this.path}/events`)).items;
  }

  /** The egress proxy's decisions for this sandbox, oldest first (the last `limit`, default 500). */
  async egressLog(opts: { limit?: number } = {}): Promise<EgressRecord[]> {
    return (await this.http.json<{ items: EgressRecord[] }>('GET', `${this.path}/egress`, { query: { limit: opts.limit } })).items;
  }

  /** Output of the main command (and of moat-init). */
  logs(opts: { tailLines?: number } = {}): Promise<string> {
    return this.http.text('GET', `${this.path}/logs`, { query: { tailLines: opts.tailLines } });
  }

  /** A sandbox made for a SandboxClaim goes with its claim. */
  async delete(opts: { wait?: boolean } = {}): Promise<void> {
    const claim = this.resource.metadata.labels?.[CLAIM_LABEL];
    if (claim && this.claims) await this.claims.delete(claim, opts);
    else await this.client.delete(this.name, opts);
  }
}
