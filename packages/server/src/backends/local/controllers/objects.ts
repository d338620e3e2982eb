import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  EXTENSIONS_API_VERSION,
  alreadyExists,
  assertName,
  badRequest,
  notFound,
  randomSuffix,
  timeout,
  type Condition,
  type ExtensionKind,
  type ExtensionObject,
  type ObjectMeta,
} from '@moat/core';
import type { ObjectInput } from '../../types.js';
import { isUniqueViolation } from '../../../store/errors.js';
import type { Store, StoredObject } from '../../../store/store.js';
import { parseSelector } from './selector.js';
import { Serial } from '../../../util/serial.js';

export type { ObjectInput };
export type AnyObject = ExtensionObject<string, unknown, unknown>;

/**
 * Storage, naming and change notification shared by SandboxTemplate,
 * SandboxClaim and SandboxWarmPool. Subclasses validate specs, compute live
 * status and react to changes (their reconcile loops).
 */
export abstract class ObjectController<T extends AnyObject> {
  protected readonly changes = new EventEmitter();
  /** One change at a time per object, in order. */
  protected readonly serial = new Serial();

  constructor(
    protected readonly store: Store,
    readonly kind: ExtensionKind,
    /** Lower-case singular, for messages: "sandbox template". */
    protected readonly noun: string,
  ) {
    this.changes.setMaxListeners(0);
  }

  /** Throws a 4xx for a spec that cannot work; returns it normalised. */
  protected abstract validate(namespace: string, spec: T['spec'], old?: T): Promise<T['spec']> | T['spec'];
  protected abstract initialStatus(): T['status'];
  /** The object as served: stored status plus what is computed live. */
  protected async present(o: T): Promise<T> {
    return o;
  }
  /** After create or update; reconcile loops hook in here. */
  protected async changed(_o: T): Promise<void> {}
  /** After the record is gone: removes what the object owned. */
  protected async deleting(_o: T, _wait: boolean): Promise<void> {}

  async create(namespace: string, input: ObjectInput): Promise<T> {
    const meta = input.metadata;
    if (meta.namespace && meta.namespace !== namespace) {
      throw badRequest(`metadata.namespace "${meta.namespace}" does not match the namespace in the path "${namespace}"`);
    }
    if (!meta.name && !meta.generateName) throw badRequest('metadata.name or metadata.generateName is required');
    const name = meta.name ? assertName(meta.name, 'metadata.name') : assertName(`${meta.generateName}${randomSuffix()}`, 'metadata.generateName');
    if (await this.store.getObject(this.kind, namespace, name)) throw this.exists(namespace, name);
    const spec = await this.validate(namespace, input.spec as T['spec']);
    const metadata: ObjectMeta = {
      name,
      namespace,
      uid: randomUUID(),
      creationTimestamp: new Date().toISOString(),
      resourceVersion: '1',
      generation: 1,
      ...(meta.labels ? { labels: meta.labels } : {}),
      ...(meta.annotations ? { annotations: meta.annotations } : {}),
    };
    const obj = { apiVersion: EXTENSIONS_API_VERSION, kind: this.kind, metadata, spec, status: this.initialStatus() } as T;
    try {
      await this.store.insertObject(obj as StoredObject);
    } catch (err) {
      if (isUniqueViolation(err)) throw this.exists(namespace, name);
      throw err;
    }
    await this.changed(obj);
    return this.present((await this.find(namespace, name)) ?? obj);
  }

  /** Replace labels, annotations and spec (kubectl apply's update). */
  async replace(namespace: string, name: string, input: ObjectInput): Promise<T> {
    const old = await this.mustFind(namespace, name);
    if (input.metadata.name && input.metadata.name !== name)
      throw badRequest(`metadata.name "${input.metadata.name}" does not match the name in the path "${name}"`);
    const spec = await this.validate(namespace, input.spec as T['spec'], old);
    const updated = (await this.store.updateObject(old.metadata.uid, { spec, labels: input.metadata.labels, annotations: input.metadata.annotations })) as
      T | undefined;
    if (!updated) throw this.missing(namespace, name);
    this.changes.emit(updated.metadata.uid);
    await this.changed(updated);
    return this.present(updated);
  }

  async get(namespace: string, name: string): Promise<T> {
    return this.present(await this.mustFind(namespace, name));
  }

  async list(namespace?: string, labelSelector?: string): Promise<T[]> {
    const match = parseSelector(labelSelector);
    const all = (await this.store.listObjects(this.kind, namespace)) as unknown as T[];
    return Promise.all(all.filter((o) => match(o.metadata.labels ?? {})).map((o) => this.present(o)));
  }

  async delete(namespace: string, name: string, wait = false): Promise<T> {
    const o = await this.mustFind(namespace, name);
    // The record goes first, so no reconcile can act on it any more; then what it owned.
    await this.store.deleteObject(o.metadata.uid);
    this.changes.emit(o.metadata.uid);
    await this.deleting(o, wait);
    return o;
  }

  /** Blocks until the condition is True or the timeout passes (408). */
  async waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const o = await this.get(namespace, name);
      const conditions = (o.status as { conditions?: Condition[] }).conditions ?? [];
      if (conditions.some((c) => c.type === condition && c.status === 'True')) return o;
      const left = deadline - Date.now();
      if (left <= 0) throw timeout(`timed out waiting for ${this.noun} "${name}" to be ${condition}`);
      // Live status comes from sandboxes too, so poll briefly besides listening for this object's changes.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          this.changes.off(o.metadata.uid, done);
          resolve();
        };
        const t = setTimeout(done, Math.min(left, 100));
        this.changes.on(o.metadata.uid, done);
      });
    }
  }

  protected async find(namespace: string, name: string): Promise<T | undefined> {
    return (await this.store.getObject(this.kind, namespace, name)) as T | undefined;
  }

  /** The object by uid, as stored (requeues carry only the uid, as controller-runtime's requests carry only a key). */
  protected async findByUid(uid: string): Promise<T | undefined> {
    const o = await this.store.getObjectByUid(uid);
    return o?.kind === this.kind ? (o as unknown as T) : undefined;
  }

  protected async mustFind(namespace: string, name: string): Promise<T> {
    const o = await this.find(namespace, name);
    if (!o) throw this.missing(namespace, name);
    return o;
  }

  protected async setStatus(o: T, status: T['status']): Promise<void> {
    if (JSON.stringify(o.status) === JSON.stringify(status)) return;
    o.status = status;
    await this.store.setObjectStatus(o.metadata.uid, status);
    this.changes.emit(o.metadata.uid);
  }

  protected missing(namespace: string, name: string) {
    return notFound(`${this.noun} "${name}" not found in namespace "${namespace}"`, { name, kind: this.kind });
  }

  private exists(namespace: string, name: string) {
    return alreadyExists(`${this.noun} "${name}" already exists in namespace "${namespace}"`, { name, kind: this.kind });
  }
}
