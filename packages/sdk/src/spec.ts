import { MoatError } from './errors.js';
import {
  EXTENSIONS_API_VERSION,
  SANDBOX_API_VERSION,
  type Container,
  type KubeObject,
  type Quantity,
  type ResourceList,
  type SandboxClaimSpec,
} from './types.js';

export interface CreateSandboxOptions {
  /** A Moat image name. Default `base`. */
  image?: string;
  /** Omitted: the server generates one (`sbx-xxxxx`). */
  name?: string;
  /** runc (default) | gvisor | microvm */
  runtime?: string;
  env?: Record<string, string>;
  labels?: Record<string, string>;
  resources?: { cpu?: Quantity; memory?: Quantity; disk?: Quantity; pids?: Quantity };
  /** Main process; without it the sandbox just idles, ready for exec. */
  command?: string[];
  /** Wait until Ready (default true). */
  wait?: boolean;
  /** How long to wait for Ready (default 60). */
  timeoutSeconds?: number;
  /**
   * Make the sandbox from this SandboxTemplate through a SandboxClaim: served
   * from a warm pool of the template when one has a ready sandbox. Image,
   * runtime, resources and command then come from the template; `env` needs
   * the template's envVarsInjectionPolicy to allow it.
   */
  template?: string;
}

/** The SandboxClaim that asks for a sandbox from a template. */
export function claimManifest(opts: CreateSandboxOptions & { template: string }): KubeObject {
  const given = (v: unknown) => v !== undefined && !(typeof v === 'object' && v !== null && Object.values(v).every((x) => x === undefined));
  const fromTemplate = (['image', 'runtime', 'resources', 'command'] as const).filter((k) => given(opts[k]));
  if (fromTemplate.length) {
    throw new MoatError(0, 'BadRequest', `${fromTemplate.join(', ')} cannot be combined with template "${opts.template}": the template decides them`);
  }
  const spec: SandboxClaimSpec = { sandboxTemplateRef: { name: opts.template } };
  if (opts.env && Object.keys(opts.env).length) spec.env = Object.entries(opts.env).map(([name, value]) => ({ name, value }));
  if (opts.labels && Object.keys(opts.labels).length) spec.additionalPodMetadata = { labels: opts.labels };
  return {
    apiVersion: EXTENSIONS_API_VERSION,
    kind: 'SandboxClaim',
    metadata: opts.name ? { name: opts.name } : { generateName: `${opts.template.slice(0, 40)}-` },
    spec,
  };
}

/** The Sandbox object that CreateSandboxOptions describe. */
export function sandboxManifest(opts: CreateSandboxOptions): KubeObject {
  const limits: ResourceList = {};
  const r = opts.resources ?? {};
  if (r.cpu !== undefined) limits.cpu = String(r.cpu);
  if (r.memory !== undefined) limits.memory = String(r.memory);
  if (r.disk !== undefined) limits['ephemeral-storage'] = String(r.disk);
  if (r.pids !== undefined) limits['moat.dev/pids'] = String(r.pids);

  const container: Container = { name: 'sandbox', image: opts.image ?? 'base' };
  if (opts.command?.length) container.command = opts.command;
  if (opts.env && Object.keys(opts.env).length) container.env = Object.entries(opts.env).map(([name, value]) => ({ name, value }));
  if (Object.keys(limits).length) container.resources = { limits };

  const metadata: KubeObject['metadata'] = opts.name ? { name: opts.name } : { generateName: 'sbx-' };
  if (opts.labels && Object.keys(opts.labels).length) metadata.labels = opts.labels;

  return {
    apiVersion: SANDBOX_API_VERSION,
    kind: 'Sandbox',
    metadata,
    spec: { podTemplate: { spec: { ...(opts.runtime ? { runtimeClassName: opts.runtime } : {}), containers: [container] } } },
  };
}
