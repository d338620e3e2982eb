import type { SandboxTemplate, SandboxWarmPool } from '@moat/core';
import { pino, type Logger } from 'pino';
import type { BackendCapabilities, SandboxBackend } from '../types.js';
import { Kube } from './kube.js';
import { KubeClaims, KubeObjects, KubePools } from './objects.js';
import { PodAgents } from './pod-agent.js';
import { ClusterRuntimes, parseRuntimeClassMap, type RuntimeClassMap } from './runtimes.js';
import { KubeSandboxes } from './sandboxes.js';
import { LeaderElection } from './leader.js';
import { PoolWarmer } from './warmer.js';

export interface KubernetesBackendOptions {
  /** A kubeconfig file; without it the pod's service account in a cluster, else $KUBECONFIG or ~/.kube/config. */
  kubeconfig?: string;
  /** Moat runtime class → RuntimeClass (default: $MOAT_K8S_RUNTIME_CLASSES over runc=node default, gvisor, microvm=kata-qemu). */
  runtimeClasses?: RuntimeClassMap;
  /** moat-init to copy into pods (default: the one built with this Moat). */
  agentBinary?: string;
  /** Where Moat's Lease lives (default $MOAT_K8S_NAMESPACE, else the kubeconfig context's namespace: in a pod, its own). */
  namespace?: string;
  log?: Logger;
}

/**
 * Sandboxes on a Kubernetes cluster, over kubernetes-sigs/agent-sandbox's controller: the cluster holds the
 * Sandbox, SandboxTemplate, SandboxClaim and SandboxWarmPool objects and agent-sandbox makes the pods; Moat
 * reads and writes those objects like any client (never the fields the controller owns) and reaches each pod
 * through pods/exec. docs/kubernetes.md has the design and what differs from one host.
 */
export class KubernetesBackend implements SandboxBackend {
  readonly kind = 'kubernetes' as const;
  readonly capabilities: BackendCapabilities = { pause: false, hibernate: true, layerBackups: false, volumes: false };

  private constructor(
    private readonly kube: Kube,
    private readonly clusterRuntimes: ClusterRuntimes,
    private readonly warmer: PoolWarmer,
    private readonly election: LeaderElection,
    private readonly agents: PodAgents,
    readonly sandboxes: KubeSandboxes,
    readonly templates: KubeObjects<SandboxTemplate>,
    readonly pools: KubePools<SandboxWarmPool>,
    readonly claims: KubeClaims,
  ) {}

  get runtimes() {
    return this.clusterRuntimes.info;
  }

  /** Connects and checks that agent-sandbox is installed (its CRDs served), so a wrong cluster fails at start. */
  static async open(o: KubernetesBackendOptions = {}): Promise<KubernetesBackend> {
    const kube = await Kube.connect(o.kubeconfig);
    try {
      await kube.get('/apis/agents.x-k8s.io/v1alpha1', 'the agents.x-k8s.io API').catch((err: Error) => {
        throw new Error(
          `${kube.server} does not serve agent-sandbox's agents.x-k8s.io/v1alpha1 API (${err.message}); install agent-sandbox v0.5 with its extensions first (docs/kubernetes.md)`,
        );
      });
      const runtimes = new ClusterRuntimes(kube, o.runtimeClasses ?? parseRuntimeClassMap(process.env.MOAT_K8S_RUNTIME_CLASSES));
      await runtimes.refresh();
      const agents = await PodAgents.open(kube, o.agentBinary);
      const sandboxes = new KubeSandboxes(kube, runtimes, agents);
      const log = o.log ?? pino({ level: 'silent' });
      const warmer = new PoolWarmer(kube, sandboxes, log);
      const election = new LeaderElection(kube, o.namespace ?? process.env.MOAT_K8S_NAMESPACE ?? kube.namespace, 'moat', log, (leading) =>
        leading ? warmer.start() : warmer.close(),
      );
      election.start();
      return new KubernetesBackend(
        kube,
        runtimes,
        warmer,
        election,
        agents,
        sandboxes,
        new KubeObjects<SandboxTemplate>(kube, 'SandboxTemplate'),
        new KubePools<SandboxWarmPool>(kube, 'SandboxWarmPool'),
        new KubeClaims(kube),
      );
    } catch (err) {
      kube.close();
      throw err;
    }
  }

  /** Work done once per cluster runs on the replica holding Moat's Lease. */
  leads(): boolean {
    return this.election.isLeader();
  }

  /** The cluster's API server, for /info and the startup banner. */
  get server(): string {
    return this.kube.server;
  }

  async close(): Promise<void> {
    await this.election.stop();
    this.warmer.close();
    this.agents.close();
    this.kube.close();
  }
}
