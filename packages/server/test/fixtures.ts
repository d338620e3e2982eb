// Controller fixtures without root: an in-memory store, the fake runtime driver, and small fakes of the
// network, images and tenancy ports the sandbox controller declares. What is faked is what the controller
// stands on, never the controller itself.
import { pino } from 'pino';
import { SANDBOX_API_VERSION, type RuntimeClassName, type Sandbox, type SandboxStatus } from '@moat/core';
import type { Image } from '@moat/runtime';
import { FakeDriver } from '@moat/runtime/testing';
import { Activity } from '../src/backends/local/controllers/activity.js';
import { SandboxController, type Drivers, type SandboxImages, type SandboxNetwork, type Tenancy } from '../src/backends/local/controllers/sandboxes.js';
import { Store, type Desired } from '../src/store/store.js';

export const silent = pino({ level: 'silent' });

export const IMAGE: Image = { name: 'base', digest: 'sha256:' + '0'.repeat(64), config: {}, layers: [] } as unknown as Image;

export const fakeImages = (): SandboxImages => ({
  resolve: async () => ({ name: IMAGE.name, digest: IMAGE.digest }),
  materialize: async (_ns, pinned) => (pinned.digest === IMAGE.digest ? IMAGE : Promise.reject(new Error(`no image ${pinned.digest}`))),
  content: { has: async (d) => d === IMAGE.digest },
});

export function fakeNetwork(): SandboxNetwork & { attachedUids: Set<string> } {
  const attachedUids = new Set<string>();
  return {
    attachedUids,
    proxyUrl: 'http://127.0.0.1:9', // never dialled: only written into the sandbox's status
    attach: async (uid) => (attachedUids.add(uid), { address: '127.0.0.2' }),
    detach: async (uid) => void attachedUids.delete(uid),
    netnsPath: (uid) => `/run/netns/fake-${uid}`,
    attached: (uid) => attachedUids.has(uid),
    env: () => ({}),
    cleanup: async (known) => {
      for (const uid of attachedUids) if (!known.includes(uid)) attachedUids.delete(uid);
    },
  };
}

export const fakeTenancy = (): Tenancy => ({ admit: (_ns, _spec, insert) => insert(), env: async () => ({}) });

export function driversOf(...all: FakeDriver[]): Drivers {
  return {
    get: (name) => all.find((d) => d.name === name),
    all: () => all,
    unavailable: (name) => (all.some((d) => d.name === name) ? undefined : `no ${name} here`),
  };
}

/** A sandbox controller over one fake driver and an in-memory store. */
export async function controllerFixture(opts: { runtime?: RuntimeClassName; checkpoint?: boolean } = {}) {
  const store = await Store.open(':memory:');
  const driver = new FakeDriver(opts.runtime ?? 'runc', { checkpoint: opts.checkpoint ?? false });
  const network = fakeNetwork();
  const activity = new Activity();
  const sandboxes = new SandboxController(store, fakeImages(), driversOf(driver), network, silent, fakeTenancy(), activity);
  return {
    store,
    driver,
    network,
    activity,
    sandboxes,
    async close() {
      await sandboxes.stop();
      await store.close();
    },
  };
}

/** A stored sandbox as a previous server left it: `phase` and `desired` as given. */
export function storedSandbox(name: string, phase: SandboxStatus['phase'], runtime: RuntimeClassName = 'runc'): Sandbox {
  return {
    apiVersion: SANDBOX_API_VERSION,
    kind: 'Sandbox',
    metadata: { name, namespace: 'default', uid: `uid-${name}`, creationTimestamp: new Date().toISOString(), resourceVersion: '1' },
    spec: { podTemplate: { spec: { runtimeClassName: runtime, containers: [{ name: 'sandbox', image: 'base' }] } } },
    status: {
      phase,
      conditions: [
        { type: 'Ready', status: phase === 'Running' ? 'True' : 'False', reason: 'Test', message: '', lastTransitionTime: new Date().toISOString() },
      ],
      runtimeClassName: runtime,
      image: { name: 'base', digest: IMAGE.digest },
    },
  };
}

export async function insertAs(store: Store, s: Sandbox, desired: Desired): Promise<void> {
  await store.insertSandbox(s);
  if (desired !== 'Running') await store.setDesired(s.metadata.uid, desired);
}

/** Resolves once `check` is true, polling the in-memory state every few ms (bounded). */
export async function eventually(what: string, check: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
