import { readFileSync, readdirSync } from 'node:fs';
import { Value } from '@sinclair/typebox/value';
import {
  EXTENSIONS_API_VERSION,
  LABELS,
  conflict,
  invalid,
  SandboxTemplateSchema,
  type SandboxSpec,
  type SandboxTemplate,
  type SandboxTemplateSpec,
} from '@moat/core';
import { parse } from 'yaml';
import type { Store } from '../../../store/store.js';
import { ObjectController, type ObjectInput } from './objects.js';
import { parseSelector } from './selector.js';

const BUILTIN_DIR = new URL('../../../../templates/', import.meta.url);

/** The templates shipped with Moat (packages/server/templates), visible in every namespace until one shadows them. */
function loadBuiltins(): SandboxTemplate[] {
  return readdirSync(BUILTIN_DIR)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => {
      const doc = parse(readFileSync(new URL(f, BUILTIN_DIR), 'utf8')) as unknown;
      if (!Value.Check(SandboxTemplateSchema, doc))
        throw new Error(`built-in template ${f} is invalid: ${[...Value.Errors(SandboxTemplateSchema, doc)][0]?.message}`);
      return {
        apiVersion: EXTENSIONS_API_VERSION,
        kind: 'SandboxTemplate' as const,
        metadata: {
          name: doc.metadata.name!,
          namespace: '', // filled in per request
          uid: `builtin-${doc.metadata.name}`,
          creationTimestamp: new Date(0).toISOString(),
          resourceVersion: '1',
          generation: 1,
          labels: { ...doc.metadata.labels, [LABELS.builtin]: 'true' },
          ...(doc.metadata.annotations ? { annotations: doc.metadata.annotations } : {}),
        },
        spec: doc.spec,
        status: {},
      };
    });
}

/**
 * SandboxTemplates: stored per namespace, plus the built-in ones, which a
 * namespace may shadow with its own template of the same name.
 */
export class TemplateController extends ObjectController<SandboxTemplate> {
  private readonly builtins = loadBuiltins();

  constructor(
    store: Store,
    /** The sandbox controller's check of a sandbox spec: a template must make sandboxes that can start. */
    private readonly validateSpec: (spec: SandboxSpec) => unknown,
  ) {
    super(store, 'SandboxTemplate', 'sandbox template');
  }

  protected validate(_namespace: string, spec: SandboxTemplateSpec): SandboxTemplateSpec {
    try {
      this.validateSpec({ podTemplate: spec.podTemplate, ...(spec.volumeClaimTemplates ? { volumeClaimTemplates: spec.volumeClaimTemplates } : {}) });
    } catch (err) {
      throw invalid(`invalid template: ${(err as Error).message}`);
    }
    return spec;
  }

  protected initialStatus() {
    return {};
  }

  /** The template a claim or pool names: the namespace's own, else a built-in one. */
  resolve(namespace: string, name: string): Promise<SandboxTemplate | undefined> {
    return this.find(namespace, name);
  }

  /** Whoever uses templates (claims, pools) hears of their changes. */
  onChange(listener: (t: { namespace: string; name: string }) => void): void {
    this.changes.on('template', listener);
  }

  protected override async changed(t: SandboxTemplate): Promise<void> {
    this.changes.emit('template', { namespace: t.metadata.namespace, name: t.metadata.name });
  }

  protected override async find(namespace: string, name: string): Promise<SandboxTemplate | undefined> {
    return (await super.find(namespace, name)) ?? this.builtin(namespace, name);
  }

  override async list(namespace?: string, labelSelector?: string): Promise<SandboxTemplate[]> {
    const own = await super.list(namespace, labelSelector);
    if (!namespace) return own; // across namespaces: only what users made
    const match = parseSelector(labelSelector);
    const shadowed = new Set(own.map((t) => t.metadata.name));
    const builtins = this.builtins
      .map((b) => this.builtin(namespace, b.metadata.name)!)
      .filter((b) => !shadowed.has(b.metadata.name) && match(b.metadata.labels ?? {}));
    return [...builtins, ...own];
  }

  /** Applying a built-in template's name creates the namespace's own copy. */
  override async replace(namespace: string, name: string, input: ObjectInput): Promise<SandboxTemplate> {
    if (!(await super.find(namespace, name)) && this.builtin(namespace, name))
      return this.create(namespace, { ...input, metadata: { ...input.metadata, name } });
    return super.replace(namespace, name, input);
  }

  override async delete(namespace: string, name: string, wait = false): Promise<SandboxTemplate> {
    if (!(await super.find(namespace, name)) && this.builtin(namespace, name)) {
      throw conflict(
        `sandbox template "${name}" is built into Moat and cannot be deleted; a template of the same name in namespace "${namespace}" would replace it`,
      );
    }
    const deleted = await super.delete(namespace, name, wait);
    this.changes.emit('template', { namespace, name });
    return deleted;
  }

  private builtin(namespace: string, name: string): SandboxTemplate | undefined {
    const b = this.builtins.find((t) => t.metadata.name === name);
    return b && structuredClone({ ...b, metadata: { ...b.metadata, namespace } });
  }
}
