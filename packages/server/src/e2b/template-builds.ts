import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MoatError, badRequest, conflict, type SandboxTemplate, type SandboxTemplateSpec } from '@moat/core';
import type { PullEvent } from '@moat/runtime';
import type { FastifyBaseLogger } from 'fastify';
import type { ExtensionObjects } from '../backends/types.js';
import { describeEvent, type ImageService } from '../images/service.js';
import { filesDir, imageFor, translate, type E2bStep, type Translation } from './template-dockerfile.js';
import type { TemplateFiles } from './template-files.js';

/** Marks the SandboxTemplates these builds made: only those a build may replace. */
export const E2B_BUILT_LABEL = 'e2b.dev/built';
const BUILD_ANNOTATION = 'e2b.dev/build';
/** A finished build's status and log stay this long for the SDK to read. */
const KEEP_MS = 60 * 60 * 1000;
/** E2B's waitForTimeout(20 s), the ready command of a Dockerfile's CMD, must fit in one probe. */
const READY_PROBE = { periodSeconds: 1, timeoutSeconds: 120 } as const;

export type BuildStatus = 'waiting' | 'building' | 'ready' | 'error';
export interface LogEntry {
  timestamp: string;
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
  step?: string;
}

export interface Build {
  templateID: string;
  buildID: string;
  namespace: string;
  /** The image the build makes: `e2b/<template>:<tag>`. */
  image: string;
  tags: string[];
  cpuCount?: number;
  memoryMB?: number;
  status: BuildStatus;
  started: boolean;
  logs: LogEntry[];
  reason?: { message: string; step?: string };
  finishedAt?: number;
}

export interface StartRequest {
  fromImage?: string;
  fromTemplate?: string;
  fromImageRegistry?: unknown;
  startCmd?: string;
  readyCmd?: string;
  steps?: E2bStep[];
  force?: boolean;
}

/**
 * E2B template builds: one Dockerfile built by the image service in the
 * background, its log kept for the SDK's polls, and on success a
 * SandboxTemplate named after the template (applied as `kubectl apply` would),
 * so claims and warm pools use the new image. Builds live in this server's
 * memory: a restart forgets those under way.
 */
export class TemplateBuilds {
  private readonly builds = new Map<string, Build>();
  private readonly aborts = new Set<AbortController>();

  constructor(
    private readonly images: ImageService,
    private readonly templates: ExtensionObjects<SandboxTemplate>,
    private readonly files: TemplateFiles,
    private readonly log: FastifyBaseLogger,
  ) {}

  /** A new build of `templateID` (a Moat template name); a template not made by a build is not overwritten. */
  async request(namespace: string, templateID: string, tags: string[], res: { cpuCount?: number; memoryMB?: number }): Promise<Build> {
    const existing = await this.existing(namespace, templateID);
    if (existing && existing.metadata.labels?.[E2B_BUILT_LABEL] !== 'true')
      throw conflict(`sandbox template "${templateID}" exists and was not made by an E2B template build: build under another name`);
    const now = Date.now();
    for (const [id, b] of this.builds) if (b.finishedAt && now - b.finishedAt > KEEP_MS) this.builds.delete(id);
    const b: Build = {
      templateID,
      buildID: randomUUID(),
      namespace,
      image: `e2b/${templateID}:${tags[0] ?? 'latest'}`,
      tags,
      ...res,
      status: 'waiting',
      started: false,
      logs: [],
    };
    this.builds.set(b.buildID, b);
    return b;
  }

  find(namespaces: (ns: string) => boolean, templateID: string, buildID: string): Build {
    const b = this.builds.get(buildID);
    if (!b || b.templateID !== templateID || !namespaces(b.namespace))
      throw new MoatError(404, 'NotFound', `build "${buildID}" of template "${templateID}" not found`);
    return b;
  }

  /** Checks the request and starts the build; what cannot be built is refused now, not found out later. */
  async start(b: Build, r: StartRequest): Promise<void> {
    if (b.started) throw conflict(`build "${b.buildID}" was already started`);
    if (r.fromImageRegistry)
      throw badRequest('registry credentials are not taken with a build: store a login for the namespace (`moat registry login`) and name the image');
    if (!r.fromImage === !r.fromTemplate) throw badRequest('give exactly one of fromImage and fromTemplate');
    const base = r.fromTemplate ? await this.baseTemplate(b.namespace, r.fromTemplate) : undefined;
    const from = base ? base.spec.podTemplate.spec.containers[0]!.image : imageFor(r.fromImage!);
    const user = await this.images.get(b.namespace, from).then(
      (i) => i.config.User ?? '',
      () => '',
    );
    const t = translate(from, r.steps ?? [], user);
    for (const hash of t.hashes)
      if (!(await this.files.present(b.namespace, hash))) throw badRequest(`the files of COPY ${hash} were not uploaded: upload them first`);
    b.started = true;
    b.status = 'building';
    const abort = new AbortController();
    this.aborts.add(abort);
    void this.run(b, t, templateSpec(base?.spec, b, r), abort.signal).finally(() => this.aborts.delete(abort));
  }

  close(): void {
    for (const a of this.aborts) a.abort();
  }

  private async run(b: Build, t: Translation, spec: SandboxTemplateSpec, signal: AbortSignal): Promise<void> {
    const shown = (line: string) => t.hashes.reduce((l, h) => l.split(`${filesDir(h)}/`).join(''), line);
    let step = 'base';
    const add = (level: LogEntry['level'], message: string) => b.logs.push({ timestamp: new Date().toISOString(), level, message: shown(message), step });
    const emit = (e: object) => {
      const ev = e as { type: string; step?: number; line?: string };
      if (ev.type === 'step') step = t.labels[(ev.step ?? 1) - 1] ?? 'finalize';
      else if (ev.type === 'log') add('info', ev.line ?? '');
      else if (ev.type !== 'layer') add('info', describeEvent(e as PullEvent));
    };
    const tmp = await this.images.content.tmpDir();
    try {
      const contextTar = join(tmp, 'context.tar');
      await this.files.writeContext(b.namespace, t.dockerfile, t.hashes, contextTar);
      await this.images.build(b.namespace, { contextTar, tag: b.image, buildArgs: {} }, { emit, signal });
      step = 'finalize';
      await this.apply(b, spec);
      add('info', `sandbox template "${b.templateID}" now starts from image ${b.image}`);
      b.status = 'ready';
    } catch (err) {
      const message = shown(err instanceof Error ? err.message : String(err));
      if (!(err instanceof MoatError && err.code < 500)) this.log.error({ err, build: b.buildID }, 'e2b template build failed');
      add('error', message);
      b.reason = { message, step };
      b.status = 'error';
    } finally {
      b.finishedAt = Date.now();
      await rm(tmp, { recursive: true, force: true });
    }
  }

  private async apply(b: Build, spec: SandboxTemplateSpec): Promise<void> {
    const input = { metadata: { name: b.templateID, labels: { [E2B_BUILT_LABEL]: 'true' }, annotations: { [BUILD_ANNOTATION]: b.buildID } }, spec };
    const existing = await this.existing(b.namespace, b.templateID);
    if (existing?.metadata.labels?.[E2B_BUILT_LABEL] === 'true') await this.templates.replace(b.namespace, b.templateID, input);
    else if (existing) throw conflict(`sandbox template "${b.templateID}" was made meanwhile, not by a build: it is left as it is`);
    else await this.templates.create(b.namespace, input);
  }

  private async baseTemplate(namespace: string, name: string): Promise<SandboxTemplate> {
    const t = await this.existing(namespace, name);
    if (!t) throw new MoatError(404, 'NotFound', `fromTemplate: no sandbox template "${name}" in namespace "${namespace}"`);
    return t;
  }

  private existing(namespace: string, name: string): Promise<SandboxTemplate | undefined> {
    return this.templates.get(namespace, name).catch((err: unknown) => {
      if (err instanceof MoatError && err.code === 404) return undefined;
      throw err;
    });
  }
}

/**
 * The template's spec: the base template's (fromTemplate) or a plain one, running the built image.
 * startCmd becomes the main command; readyCmd its readiness probe, so a claim is ready once it passes.
 */
function templateSpec(base: SandboxTemplateSpec | undefined, b: Build, r: StartRequest): SandboxTemplateSpec {
  const spec: SandboxTemplateSpec = base ? structuredClone(base) : { podTemplate: { spec: { containers: [{ name: 'sandbox', image: b.image }] } } };
  const pod = spec.podTemplate;
  pod.metadata = { ...pod.metadata, annotations: { ...pod.metadata?.annotations, [BUILD_ANNOTATION]: b.buildID } };
  const c = pod.spec.containers[0]!;
  c.image = b.image;
  if (r.startCmd) {
    c.command = ['/bin/sh', '-c', r.startCmd];
    delete c.args;
  }
  if (r.readyCmd) c.readinessProbe = { exec: { command: ['/bin/sh', '-c', r.readyCmd] }, ...READY_PROBE };
  if (b.cpuCount || b.memoryMB)
    c.resources = {
      ...c.resources,
      limits: { ...c.resources?.limits, ...(b.cpuCount ? { cpu: String(b.cpuCount) } : {}), ...(b.memoryMB ? { memory: `${b.memoryMB}Mi` } : {}) },
    };
  return spec;
}
