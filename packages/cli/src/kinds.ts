import {
  CONDITION,
  EXTENSIONS_API_VERSION,
  EXTENSIONS_API_VERSIONS,
  LABELS,
  SANDBOX_API_VERSION,
  SANDBOX_API_VERSIONS,
  type Condition,
  type KubeObject,
  type SandboxResource,
} from '@moat/sdk';
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
 * a new kind is one more entry in KINDS.
 */
export interface ResourceKind {
  kind: string;
  /** The version the CLI talks; manifests may also carry any of `acceptedVersions`. */
  apiVersion: string;
  acceptedVersions: readonly string[];
  plural: string;
  singular: string;
  aliases: string[];
  columns: Column[];
  /** The server refuses changes to an existing object's spec: apply can only say "unchanged" or ask for delete + apply. Other kinds are updated with PUT. */
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
  apiVersion: SANDBOX_API_VERSION,
  acceptedVersions: SANDBOX_API_VERSIONS,
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
    // The image's EXPOSEd ports, as `docker ps` lists them; each is served at .../ports/N/.
    { header: 'PORTS', wide: true, value: (o) => (sbx(o).status?.image?.ports ?? []).map((p) => `${p}/tcp`).join(',') },
  ],
};

type Loose = { spec?: any; status?: any };
const loose = (o: KubeObject) => o as KubeObject & Loose;
const ready = (o: KubeObject) => (loose(o).status?.conditions as Condition[] | undefined)?.find((c) => c.type === CONDITION.Ready);

export const TEMPLATE_KIND: ResourceKind = {
  kind: 'SandboxTemplate',
  apiVersion: EXTENSIONS_API_VERSION,
  acceptedVersions: EXTENSIONS_API_VERSIONS,
  plural: 'sandboxtemplates',
  singular: 'sandboxtemplate',
  aliases: ['template', 'templates'],
  immutableSpec: false,
  waitable: false,
  columns: [
    name,
    { header: 'IMAGE', value: (o) => loose(o).spec?.podTemplate?.spec?.containers?.[0]?.image ?? '' },
    { header: 'RUNTIME', value: (o) => loose(o).spec?.podTemplate?.spec?.runtimeClassName ?? 'runc' },
    { header: 'BUILTIN', value: (o) => (o.metadata.labels?.[LABELS.builtin] === 'true' ? 'yes' : '') },
    age,
  ],
};

export const CLAIM_KIND: ResourceKind = {
  kind: 'SandboxClaim',
  apiVersion: EXTENSIONS_API_VERSION,
  acceptedVersions: EXTENSIONS_API_VERSIONS,
  plural: 'sandboxclaims',
  singular: 'sandboxclaim',
  aliases: ['claim', 'claims'],
  immutableSpec: true,
  waitable: true,
  columns: [
    name,
    { header: 'TEMPLATE', value: (o) => loose(o).spec?.sandboxTemplateRef?.name ?? '' },
    { header: 'SANDBOX', value: (o) => loose(o).status?.sandbox?.name ?? '' },
    { header: 'READY', value: (o) => (ready(o)?.status === 'True' ? 'True' : (ready(o)?.reason ?? 'Unknown')) },
    { header: 'WARM POOL', value: (o) => loose(o).status?.warmPool ?? '' },
    age,
  ],
};

export const POOL_KIND: ResourceKind = {
  kind: 'SandboxWarmPool',
  apiVersion: EXTENSIONS_API_VERSION,
  acceptedVersions: EXTENSIONS_API_VERSIONS,
  plural: 'sandboxwarmpools',
  singular: 'sandboxwarmpool',
  aliases: ['warmpool', 'warmpools', 'pool', 'pools'],
  immutableSpec: false,
  waitable: true,
  columns: [
    name,
    { header: 'TEMPLATE', value: (o) => loose(o).spec?.sandboxTemplateRef?.name ?? '' },
    { header: 'DESIRED', value: (o) => String(loose(o).spec?.replicas ?? '') },
    { header: 'READY', value: (o) => String(loose(o).status?.readyReplicas ?? 0) },
    age,
    { header: 'STATUS', wide: true, value: (o) => ready(o)?.reason ?? '' },
  ],
};

export const KINDS: ResourceKind[] = [SANDBOX_KIND, TEMPLATE_KIND, CLAIM_KIND, POOL_KIND];

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
  if (obj.apiVersion !== undefined && !found.acceptedVersions.includes(String(obj.apiVersion))) {
    throw new CliError(`${where}: ${found.kind} has apiVersion ${found.acceptedVersions.map((v) => `"${v}"`).join(' or ')}, not "${String(obj.apiVersion)}"`);
  }
  return found;
}

export function tableRows(kind: ResourceKind, objects: KubeObject[], wide: boolean, now = Date.now()): { headers: string[]; rows: string[][] } {
  const cols = kind.columns.filter((c) => wide || !c.wide);
  return { headers: cols.map((c) => c.header), rows: objects.map((o) => cols.map((c) => c.value(o, now))) };
}
