import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { AgentMux, MuxStream } from '@moat/runtime';
import { ExecFailure } from './pod-exec.js';

/** A channel without streams for this long is closed, so Moat does not hold an exec session per pod forever. */
const IDLE_MS = 5 * 60_000;
/** The agent must say it runs within this time, or the channel is given up (the next operation starts another). */
const START_MS = 20_000;

/**
 * One long-lived `moat-init --mux` in a pod (a pods/exec session in production: `spawn` makes it) carrying every
 * agent connection Moat opens to that pod, so an operation costs no apiserver round trip of its own. If the agent
 * binary is not in the container yet, it is installed and the channel started again; connections opened
 * meanwhile wait, and are attached once the agent runs. When the channel drops (the pod is gone, the kubelet
 * restarted, the agent was killed) its connections fail and it emits 'close': the next operation gets a new one.
 */
export class PodMux extends EventEmitter {
  /** The running channel; rejects if it could not be started. */
  readonly ready: Promise<AgentMux>;
  closed = false;
  private mux?: AgentMux;
  private idleTimer?: NodeJS.Timeout;

  /** `hold`: not closed for idleness before its first connection (a warm pool member waiting for its claim). */
  constructor(
    spawn: () => Duplex,
    install: () => Promise<void>,
    private hold = false,
  ) {
    super();
    this.ready = start(spawn, install);
    this.ready.then(
      (mux) => {
        this.mux = mux;
        if (this.closed) return mux.destroy();
        mux.on('idle', () => this.idle());
        mux.once('close', () => this.end());
        if (mux.size === 0) this.idle();
      },
      () => this.end(),
    );
  }

  /** A new connection to the agent. */
  open(allowHalfOpen: boolean): Duplex {
    const stream = new MuxStream({ allowHalfOpen });
    if (this.mux) this.attach(this.mux, stream);
    else
      this.ready.then(
        (mux) => this.attach(mux, stream),
        (err: Error) => stream.destroy(err),
      );
    return stream;
  }

  close(): void {
    this.end();
    this.mux?.destroy();
  }

  private attach(mux: AgentMux, stream: MuxStream) {
    clearTimeout(this.idleTimer);
    this.hold = false;
    mux.attach(stream);
  }

  private idle() {
    if (this.hold) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.close(), IDLE_MS).unref();
  }

  private end() {
    clearTimeout(this.idleTimer);
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
  }
}

/** Starts the agent; if the container lacks it (the kubelet says so before any byte), installs it and starts again. */
async function start(spawn: () => Duplex, install: () => Promise<void>): Promise<AgentMux> {
  try {
    return await running(spawn());
  } catch (err) {
    if (!(err instanceof ExecFailure && err.notFound)) throw err;
  }
  await install();
  return running(spawn());
}

async function running(channel: Duplex): Promise<AgentMux> {
  const mux = new AgentMux(channel);
  const timer = setTimeout(() => mux.destroy(new Error(`the agent did not start within ${START_MS} ms`)), START_MS);
  try {
    await mux.ready;
    return mux;
  } finally {
    clearTimeout(timer);
  }
}
