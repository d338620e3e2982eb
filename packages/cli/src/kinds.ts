import type { KubeObject, SandboxResource } from '@moat/sdk';
import { CliError } from './errors.js';
import { humanAge, shortDigest } from './output.js';

export interface Column {
  header: string;
  value(obj: KubeObject, now: number): string;
  /** Only with `-o wide`. */
  wide?: boolean;
}

/**
 * What the generic commands (get, delete, apply, wait) need to know about a
 * resource type. Objects live at `/apis/{apiVersion}/namespaces/{ns}/{plural}`;
 * a new kind (SandboxTemplate, SandboxClaim, SandboxWarmPool under
 * `extensions.agents.x-k8s.io/v1alpha1`) is one more entry in KINDS.
 */
export interface ResourceKind {
  kind: string;
  apiVersion: string;
  plural: string;
  singular: string;
  aliases: string[];
  columns: Column[];
  /**
   * The server refuses changes to an existing object's spec, so apply can only
   * say "unchanged" or ask for delete + apply. A mutable kind will need an
   * update route before apply can handle it.
   */
  immutableSpec: boolean;
  /** Has `GET {plural}/{name}/wait?condition=`. */
  waitable: boolean;
}

const name: Column = { header: 'NAME', value: (o) => o.metadata.name ?? '' };
const age: Column = { header: 'AGE', value: (o, now) => humanAge(o.metadata.creationTimestamp, now) };

const sbx = (o: KubeObject) => o as SandboxResource;
const container = (o: KubeObject) => sbx(o).spec?.podTemplate?.spec?.containers?.[0];
const limits = (o: KubeObject) => ({ ...container(o)?.resources?.requests, ...container(o)?.resources?.limits });

export const SANDBOX_KIND: ResourceKind = {
  kind: 'Sandbox',
  apiVersion: 'agents.x-k8s.io/v1alpha1',
  plural: 'sandboxes',
  singular: 'sandbox',
  aliases: ['sbx'],
  immutableSpec: true,
  waitable: true,
  columns: [
    name,
    { header: 'STATUS', value: (o) => sbx(o).status?.phase ?? 'Unknown' },
    { header: 'RUNTIME', value: (o) => sbx(o).status?.runtimeClassName ?? sbx(o).spec?.podTemplate?.spec?.runtimeClassName ?? 'runc' },
    { header: 'IMAGE', value: (o) => container(o)?.image ?? '' },
    age,
    { header: 'IMAGE DIGEST', wide: true, value: (o) => shortDigest(sbx(o).status?.image?.digest) },
    // Unset limits mean the server defaults (docs/api.md): show those rather than blanks.
    { header: 'CPU', wide: true, value: (o) => String(limits(o).cpu ?? '1') },
    { header: 'MEMORY', wide: true, value: (o) => String(limits(o).memory ?? '512Mi') },
  ],
};

export const KINDS: ResourceKind[] = [SANDBOX_KIND];

const supportedTypes = () => KINDS.map((k) => k.plural).join(', ');
const supportedKinds = () => KINDS.map((k) => k.kind).join(', ');

/** A type as typed on the command line: plural, singular, alias or kind, any case. */
export function kindByName(type: string): ResourceKind {
  const t = type.toLowerCase();
  const found = KINDS.find((k) => k.plural === t || k.singular === t || k.kind.toLowerCase() === t || k.aliases.includes(t));
  if (!found) throw new CliError(`unknown resource type "${type}": supported types are ${supportedTypes()}`);
  return found;
}

/** The kind of a manifest, checked against its apiVersion. */
export function kindOfManifest(obj: { apiVersion?: unknown; kind?: unknown }, where: string): ResourceKind {
  if (typeof obj.kind !== 'string' || !obj.kind) throw new CliError(`${where}: missing "kind" (supported kinds: ${supportedKinds()})`);
  const found = KINDS.find((k) => k.kind === obj.kind);
  if (!found) throw new CliError(`${where}: unsupported kind "${obj.kind}": supported kinds are ${supportedKinds()}`);
  if (obj.apiVersion !== undefined && obj.apiVersion !== found.apiVersion) {
    throw new CliError(`${where}: ${found.kind} has apiVersion "${found.apiVersion}", not "${String(obj.apiVersion)}"`);
  }
  return found;
}

export function tableRows(kind: ResourceKind, objects: KubeObject[], wide: boolean, now = Date.now()): { headers: string[]; rows: string[][] } {
  const cols = kind.columns.filter((c) => wide || !c.wide);
  return { headers: cols.map((c) => c.header), rows: objects.map((o) => cols.map((c) => c.value(o, now))) };
}
