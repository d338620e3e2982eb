import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { MoatError } from '@moat/core';
import type { Logger } from 'pino';
import type { Kube } from './kube.js';

/** client-go's defaults: a lease lasts 15 s, its holder renews every 2 s and gives up after 10 s without renewing. */
const LEASE_SECONDS = 15;
const RETRY_MS = 2000;
const RENEW_DEADLINE_MS = 10_000;

/** A Lease's times are MicroTime: RFC 3339 with exactly six fractional digits. */
const microTime = (d: Date) => d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

interface Lease {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: { holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: string; renewTime?: string; leaseTransitions?: number };
}

/**
 * Leader election over a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers do it: the work done once
 * per cluster (E2B timeouts, warming pool members) runs on the replica holding the Lease. Every replica serves the
 * API. A holder that stops renewing (killed, cut off) loses the Lease once it expires; a holder that cannot renew
 * within the renew deadline stops leading first, so two replicas never both believe they lead.
 */
export class LeaderElection {
  readonly identity = `${hostname()}-${randomBytes(4).toString('hex')}`;
  private leading = false;
  private lastRenew = 0;
  private timer?: NodeJS.Timeout;
  private readonly path: string;

  constructor(
    private readonly kube: Kube,
    private readonly namespace: string,
    private readonly name: string,
    private readonly log: Logger,
    /** Called when this replica starts or stops leading. */
    private readonly onChange: (leading: boolean) => void = () => {},
  ) {
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases`;
  }

  isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    const tick = () => {
      void this.round().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, RETRY_MS);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  /** One try to take or renew the Lease. */
  private async round(): Promise<void> {
    try {
      const now = new Date();
      const lease = await this.kube.find<Lease>(`${this.path}/${this.name}`, this.what);
      if (!lease) {
        await this.kube.call('POST', this.path, this.what, this.body(now, undefined, 0));
        return this.became(true, now);
      }
      const s = lease.spec;
      const expired = !s.renewTime || Date.parse(s.renewTime) + (s.leaseDurationSeconds ?? LEASE_SECONDS) * 1000 < now.getTime();
      if (s.holderIdentity !== this.identity && !expired) return this.became(false, now);
      const transitions = (s.leaseTransitions ?? 0) + (s.holderIdentity === this.identity ? 0 : 1);
      // The resourceVersion makes this a compare-and-swap: of two replicas taking an expired Lease, one gets 409.
      await this.kube.call('PUT', `${this.path}/${this.name}`, this.what, {
        ...this.body(now, s.holderIdentity === this.identity ? s.acquireTime : undefined, transitions),
        metadata: { name: this.name, namespace: this.namespace, resourceVersion: lease.metadata.resourceVersion },
      });
      this.became(true, now);
    } catch (err) {
      if (!(err instanceof MoatError && err.code === 409)) this.log.warn({ err }, 'leader election: cannot reach the Lease');
      if (this.leading && Date.now() - this.lastRenew > RENEW_DEADLINE_MS) this.became(false, new Date());
    }
  }

  private get what() {
    return `Lease ${this.namespace}/${this.name}`;
  }

  private body(now: Date, acquired: string | undefined, transitions: number): Lease & { apiVersion: string; kind: string } {
    return {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: this.name, namespace: this.namespace },
      spec: {
        holderIdentity: this.identity,
        leaseDurationSeconds: LEASE_SECONDS,
        acquireTime: acquired ?? microTime(now),
        renewTime: microTime(now),
        leaseTransitions: transitions,
      },
    };
  }

  private became(leading: boolean, at: Date) {
    if (leading) this.lastRenew = at.getTime();
    if (leading === this.leading) return;
    this.log.info({ identity: this.identity, lease: this.what }, leading ? 'leading' : 'no longer leading');
    this.leading = leading;
    this.onChange(leading);
  }

  /** Gives the Lease up (an orderly shutdown), so another replica leads at once rather than after it expires. */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.leading) return;
    this.became(false, new Date());
    const lease = await this.kube.find<Lease>(`${this.path}/${this.name}`, this.what).catch(() => undefined);
    if (lease?.spec.holderIdentity !== this.identity) return;
    await this.kube
      .call('PUT', `${this.path}/${this.name}`, this.what, {
        ...lease,
        spec: { ...lease.spec, renewTime: microTime(new Date(0)), leaseDurationSeconds: 1 },
      })
      .catch(() => {});
  }
}
