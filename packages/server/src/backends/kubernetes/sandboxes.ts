import { CONDITION, MoatError, REASON, badRequest, conflict, notFound, type Sandbox, type SandboxInput } from '@moat/core';
import type { SandboxAgent, Usage } from '@moat/runtime';
import type { Desired, SandboxEvent, StoredSandbox } from '../../store/store.js';
import type { Sandboxes } from '../types.js';
import { missingNamespace, type Kube } from './kube.js';
import { conditionIs, until } from './objects.js';
import type { PodAgents } from './pod-agent.js';
import type { PodRef } from './pod-exec.js';
import type { ClusterRuntimes } from './runtimes.js';
import { collectionPath, objectPath, phaseOf, podName, refuseHostOnly, toKube, toSandbox, type KubeObject } from './translate.js';

/** How long an exec or file call waits for a hibernated sandbox to come back (a new pod: schedule, start, probe). */
const WAKE_WAIT_MS = 120_000;

/** Container states that mean the pod will not start by itself; surfaced in the sandbox's Ready condition. */
const STUCK: Record<string, string> = {
  ErrImagePull: REASON.ImageNotFound,
  ImagePullBackOff: REASON.ImageNotFound,
  InvalidImageName: REASON.ImageNotFound,
  ErrImageNeverPull: REASON.ImageNotFound,
  CreateContainerConfigError: REASON.StartFailed,
  CreateContainerError: REASON.StartFailed,
  CrashLoopBackOff: REASON.StartFailed,
  RunContainerError: REASON.StartFailed,
};

interface Pod {
  metadata: { uid: string };
  spec: { containers: { name: string }[]; nodeName?: string };
  status?: {
    containerStatuses?: { state?: { waiting?: { reason?: string; message?: string } } }[];
    conditions?: { type: string; reason?: string; message?: string; status: string }[];
  };
}

/**
 * Sandboxes on a cluster: agent-sandbox's Sandbox objects, read and written through the Kubernetes API; the
 * controller makes their pods. Moat adds its agent in each pod (exec, files, ports), hibernation as 0 replicas
 * (operatingMode Suspended, the volumes kept), and waking on use.
 */
export class KubeSandboxes implements Sandboxes {
  constructor(
    private readonly kube: Kube,
    private readonly runtimes: ClusterRuntimes,
    private readonly agents: PodAgents,
  ) {}

  private what = (namespace: string, name: string) => `sandbox ${namespace}/${name}`;
  private path = (namespace: string, name: string) => objectPath('Sandbox', namespace, name);
  private answer = (obj: KubeObject) => toSandbox(obj, this.runtimes.moatName(this.runtimeClassOf(obj)));

  private runtimeClassOf(obj: KubeObject): string | undefined {
    return (obj.spec.podTemplate as { spec?: { runtimeClassName?: string } } | undefined)?.spec?.runtimeClassName;
  }

  async create(namespace: string, input: SandboxInput): Promise<Sandbox> {
    const meta = input.metadata;
    if (!meta.name && !meta.generateName) throw badRequest('metadata.name or metadata.generateName is required');
    refuseHostOnly(input.spec as Record<string, unknown>, 'spec');
    const pod = input.spec.podTemplate.spec;
    const runtime = await this.runtimes.resolve(pod.runtimeClassName);
    const { runtimeClassName: _given, ...podSpec } = pod;
    // Kubernetes needs a container name; Moat's single-host API does not.
    const containers = podSpec.containers.map((c) => ({ ...c, name: c.name ?? 'sandbox' }));
    const kubePod = { ...podSpec, containers, ...(runtime.kube ? { runtimeClassName: runtime.kube } : {}) };
    const spec = { ...input.spec, podTemplate: { ...input.spec.podTemplate, spec: kubePod } };
    const body = toKube('Sandbox', namespace, { metadata: meta, spec });
    const what = this.what(namespace, meta.name ?? `${meta.generateName}*`);
    const created = await this.kube.call<KubeObject>('POST', collectionPath('Sandbox', namespace), what, body).catch((err: unknown) => {
      throw missingNamespace(err, namespace);
    });
    return this.answer(created);
  }

  async get(namespace: string, name: string): Promise<StoredSandbox> {
    const obj = await this.kube.get<KubeObject>(this.path(namespace, name), this.what(namespace, name));
    const sandbox = this.answer(obj);
    if (sandbox.status.phase === 'Pending') await this.explain(obj, sandbox);
    return { sandbox, desired: desiredOf(obj) };
  }

  /**
   * A pending sandbox whose pod is stuck (its image cannot be pulled, say) or whose node is away says so in its
   * Ready condition, where agent-sandbox only says its pod is not ready. Returns that condition's message.
   */
  private async explain(obj: KubeObject, sandbox: Sandbox): Promise<string | undefined> {
    const pod = await this.kube.find<Pod>(`/api/v1/namespaces/${encodeURIComponent(obj.metadata.namespace)}/pods/${encodeURIComponent(podName(obj))}`, 'pod');
    const waiting = pod?.status?.containerStatuses?.map((c) => c.state?.waiting).find((w) => w?.reason && STUCK[w.reason]);
    const unschedulable = pod?.status?.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False');
    const why = waiting
      ? { reason: STUCK[waiting.reason!]!, message: `${waiting.reason}: ${waiting.message ?? ''}`.trim() }
      : unschedulable
        ? { reason: unschedulable.reason ?? 'Unschedulable', message: unschedulable.message ?? 'the pod cannot be scheduled' }
        : await this.nodeAway(pod);
    const ready = sandbox.status.conditions.find((c) => c.type === CONDITION.Ready);
    if (!why) return ready?.message;
    if (ready) Object.assign(ready, why);
    else sandbox.status.conditions.push({ type: CONDITION.Ready, status: 'False', ...why, lastTransitionTime: '' });
    return why.message;
  }

  /** The pod's node when it is not Ready (its kubelet stopped reporting, say): the pod may well still run there. */
  private async nodeAway(pod: Pod | undefined): Promise<{ reason: string; message: string } | undefined> {
    if (!pod?.spec.nodeName) return undefined;
    type Node = { status?: { conditions?: { type: string; status: string; message?: string }[] } };
    // Moat may lack `get nodes` (a namespaced Role): then the sandbox keeps agent-sandbox's own words.
    const node = await this.kube.find<Node>(`/api/v1/nodes/${encodeURIComponent(pod.spec.nodeName)}`, `node ${pod.spec.nodeName}`).catch(() => undefined);
    const ready = node?.status?.conditions?.find((c) => c.type === 'Ready');
    if (!ready || ready.status === 'True') return undefined;
    const detail = ready.message ? ` (${ready.message.replace(/\.$/, '')})` : '';
    return {
      reason: 'NodeNotReady',
      message: `node ${pod.spec.nodeName} is not ready${detail}: the pod may still run there, and serves again once the node is back`,
    };
  }

  async list(namespace?: string, labelSelector?: string): Promise<Sandbox[]> {
    const q = labelSelector ? `?labelSelector=${encodeURIComponent(labelSelector)}` : '';
    const list = await this.kube.get<{ items: KubeObject[] }>(collectionPath('Sandbox', namespace) + q, 'sandboxes');
    return list.items.map(this.answer);
  }

  async delete(namespace: string, name: string, wait = false): Promise<Sandbox> {
    const path = this.path(namespace, name);
    const obj = await this.kube.call<KubeObject>('DELETE', path, this.what(namespace, name), { propagationPolicy: 'Foreground' });
    if (wait) {
      const deadline = Date.now() + 120_000;
      while (await this.kube.find(path, this.what(namespace, name))) {
        if (Date.now() > deadline) throw new MoatError(408, 'Timeout', `${this.what(namespace, name)} was not gone within 120 s`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    return this.answer(obj);
  }

  async pause(): Promise<Sandbox> {
    throw new MoatError(501, 'NotImplemented', 'the kubernetes backend cannot pause sandboxes (Kubernetes has no pod freeze); hibernate keeps the volumes');
  }

  async resume(): Promise<Sandbox> {
    return this.pause();
  }

  /** 0 replicas: agent-sandbox deletes the pod and keeps the Sandbox and its PersistentVolumeClaims (operatingMode Suspended). */
  async hibernate(namespace: string, name: string): Promise<Sandbox> {
    return this.answer(await this.kube.mergePatch<KubeObject>(this.path(namespace, name), this.what(namespace, name), { spec: { replicas: 0 } }));
  }

  /** One replica again, and back once Ready (a new pod on the same volumes). */
  async wake(namespace: string, name: string): Promise<Sandbox> {
    await this.kube.mergePatch(this.path(namespace, name), this.what(namespace, name), { spec: { replicas: 1 } });
    return this.waitFor(namespace, name, CONDITION.Ready, WAKE_WAIT_MS);
  }

  async revive(namespace: string, name: string): Promise<Sandbox> {
    return (await this.get(namespace, name)).sandbox;
  }

  async setShutdownTime(namespace: string, name: string, shutdownTime: string): Promise<Sandbox> {
    return this.answer(await this.kube.mergePatch<KubeObject>(this.path(namespace, name), this.what(namespace, name), { spec: { shutdownTime } }));
  }

  waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<Sandbox> {
    return until(this.kube, 'Sandbox', namespace, name, timeoutMs, (o) => (conditionIs(o, condition) ? this.answer(o) : undefined), condition);
  }

  /** Kubernetes Events about the sandbox (agent-sandbox's, the scheduler's and the kubelet's are about its pod). */
  async events(uid: string): Promise<SandboxEvent[]> {
    type Ev = { type?: string; reason?: string; message?: string; lastTimestamp?: string; eventTime?: string; metadata: { creationTimestamp: string } };
    const list = await this.kube.get<{ items: Ev[] }>(`/api/v1/events?fieldSelector=${encodeURIComponent(`involvedObject.uid=${uid}`)}`, 'events');
    return list.items.map((e) => ({
      type: e.type === 'Warning' ? 'Warning' : 'Normal',
      reason: e.reason ?? '',
      message: e.message ?? '',
      time: e.lastTimestamp ?? e.eventTime ?? e.metadata.creationTimestamp,
    }));
  }

  /** Auto-resume: a hibernated sandbox is woken by the call that needs it. */
  async running(namespace: string, name: string): Promise<{ sandbox: Sandbox; agent: SandboxAgent }> {
    const obj = await this.kube.get<KubeObject>(this.path(namespace, name), this.what(namespace, name));
    if (obj.metadata.deletionTimestamp) throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
    const pool = obj.metadata.labels?.['agents.x-k8s.io/warm-pool-sandbox'];
    if (pool && !obj.metadata.ownerReferences?.some((o) => o.kind === 'SandboxClaim')) {
      throw conflict(`sandbox "${name}" waits unclaimed in warm pool "${pool}"; claim one with a SandboxClaim to use it`);
    }
    let sandbox = this.answer(obj);
    if (sandbox.status.phase === 'Hibernated') sandbox = await this.wake(namespace, name);
    else if (sandbox.status.phase === 'Pending') {
      const why = await this.explain(obj, sandbox);
      throw conflict(`sandbox "${name}" is Pending, not Running: ${why ? `${why}; ` : ''}wait for it to be Ready`);
    } else if (sandbox.status.phase !== 'Running') throw conflict(`sandbox "${name}" is ${sandbox.status.phase}, not Running`);
    return { sandbox, agent: this.agent(sandbox) };
  }

  agent(sandbox: Sandbox): SandboxAgent {
    return this.agents.agent(...agentPod(sandbox));
  }

  /** Starts the agent's channel to a warm pool member's pod, held open for its claim's first operation. */
  warm(sandbox: Sandbox): Promise<void> {
    return this.agents.warm(...agentPod(sandbox));
  }

  /** Resource use needs the cluster's metrics API, which Moat does not require: absent here. */
  async usage(_sandbox: Sandbox): Promise<Usage | undefined> {
    return undefined;
  }

  async logs(sandbox: Sandbox): Promise<string> {
    const pod = sandbox.metadata.annotations?.['agents.x-k8s.io/pod-name'] ?? sandbox.metadata.name;
    return this.kube.text(
      `/api/v1/namespaces/${encodeURIComponent(sandbox.metadata.namespace)}/pods/${encodeURIComponent(pod)}/log?tailLines=10000`,
      `logs of ${pod}`,
    );
  }
}

/** The container Moat's agent serves, and the key of the pod's agent channel. */
function agentPod(sandbox: Sandbox): [PodRef, string] {
  const container = sandbox.spec.podTemplate.spec.containers[0]!.name ?? '';
  const pod = sandbox.metadata.annotations?.['agents.x-k8s.io/pod-name'] ?? sandbox.metadata.name;
  // Keyed by the sandbox and its pod: a woken sandbox's new pod (same name) gets a channel of its own, the old one
  // having ended with its pod.
  return [{ namespace: sandbox.metadata.namespace, pod, container }, `${sandbox.metadata.uid}/${pod}`];
}

function desiredOf(obj: KubeObject): Desired {
  if (obj.metadata.deletionTimestamp) return 'Deleted';
  return phaseOf(obj) === 'Hibernated' ? 'Hibernated' : 'Running';
}
