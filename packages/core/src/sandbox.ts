import { Type, type Static } from '@sinclair/typebox';
import { SANDBOX_API_VERSION, SANDBOX_API_VERSIONS } from './api.js';
import { EgressLimitsSchema, EgressPolicySchema } from './egress.js';

export const RUNTIME_CLASSES = ['runc', 'gvisor', 'microvm'] as const;
export type RuntimeClassName = (typeof RUNTIME_CLASSES)[number];

const Strict = { additionalProperties: false } as const;
const StringMap = Type.Record(Type.String({ maxLength: 253 }), Type.String({ maxLength: 4096 }));
const Quantity = Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })]);

export const ObjectMetaSchema = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 253 })),
    generateName: Type.Optional(Type.String({ maxLength: 58 })),
    namespace: Type.Optional(Type.String({ maxLength: 63 })),
    labels: Type.Optional(StringMap),
    annotations: Type.Optional(StringMap),
    // Read-only fields a client may echo back from `get -o yaml`; ignored on input.
    uid: Type.Optional(Type.String()),
    creationTimestamp: Type.Optional(Type.String()),
    resourceVersion: Type.Optional(Type.String()),
    generation: Type.Optional(Type.Number()),
  },
  Strict,
);

export const EnvVarSchema = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 256, pattern: '^[^=\\x00]+$' }), value: Type.Optional(Type.String({ maxLength: 32768 })) },
  Strict,
);

export const ResourceListSchema = Type.Object(
  {
    cpu: Type.Optional(Quantity),
    memory: Type.Optional(Quantity),
    'ephemeral-storage': Type.Optional(Quantity),
    'moat.dev/pids': Type.Optional(Quantity),
  },
  Strict,
);

const PortRef = Type.Union([Type.Integer({ minimum: 1, maximum: 65535 }), Type.String({ minLength: 1, maxLength: 15 })]);

/** Kubernetes probe shape. Moat runs exec, httpGet and tcpSocket probes from inside the sandbox. */
export const ProbeSchema = Type.Object(
  {
    exec: Type.Optional(Type.Object({ command: Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 1024 }) }, Strict)),
    httpGet: Type.Optional(
      Type.Object(
        {
          path: Type.Optional(Type.String({ maxLength: 2048, pattern: '^/' })),
          port: PortRef,
          host: Type.Optional(Type.String({ maxLength: 253 })),
          scheme: Type.Optional(Type.Literal('HTTP')),
          httpHeaders: Type.Optional(
            Type.Array(Type.Object({ name: Type.String({ minLength: 1, maxLength: 256 }), value: Type.String({ maxLength: 4096 }) }, Strict), { maxItems: 32 }),
          ),
        },
        Strict,
      ),
    ),
    tcpSocket: Type.Optional(Type.Object({ port: PortRef, host: Type.Optional(Type.String({ maxLength: 253 })) }, Strict)),
    initialDelaySeconds: Type.Optional(Type.Integer({ minimum: 0, maximum: 3600 })),
    periodSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600 })),
    timeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600 })),
    successThreshold: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
    failureThreshold: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    terminationGracePeriodSeconds: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  Strict,
);
export type Probe = Static<typeof ProbeSchema>;
export type Container = Static<typeof ContainerSchema>;

/** Accepted for YAML portability with Kubernetes; inside Moat every sandbox already runs in its own user namespace. */
export const SecurityContextSchema = Type.Object(
  {
    runAsUser: Type.Optional(Type.Integer({ minimum: 0 })),
    runAsGroup: Type.Optional(Type.Integer({ minimum: 0 })),
    runAsNonRoot: Type.Optional(Type.Boolean()),
    fsGroup: Type.Optional(Type.Integer({ minimum: 0 })),
    allowPrivilegeEscalation: Type.Optional(Type.Boolean()),
    readOnlyRootFilesystem: Type.Optional(Type.Boolean()),
    privileged: Type.Optional(Type.Literal(false)),
    capabilities: Type.Optional(
      Type.Object({ drop: Type.Optional(Type.Array(Type.String())), add: Type.Optional(Type.Array(Type.String(), { maxItems: 0 })) }, Strict),
    ),
    seccompProfile: Type.Optional(Type.Object({ type: Type.String() }, Strict)),
  },
  Strict,
);

export const ContainerSchema = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 63 })),
    image: Type.String({ minLength: 1, maxLength: 255 }),
    imagePullPolicy: Type.Optional(Type.String()), // images are local; accepted for YAML portability
    command: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { maxItems: 1024 })),
    args: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { maxItems: 1024 })),
    env: Type.Optional(Type.Array(EnvVarSchema, { maxItems: 1024 })),
    workingDir: Type.Optional(Type.String({ maxLength: 4096 })),
    resources: Type.Optional(Type.Object({ limits: Type.Optional(ResourceListSchema), requests: Type.Optional(ResourceListSchema) }, Strict)),
    readinessProbe: Type.Optional(ProbeSchema),
    // Liveness and startup probes are accepted for portability; Moat does not restart sandboxes on them.
    livenessProbe: Type.Optional(ProbeSchema),
    startupProbe: Type.Optional(ProbeSchema),
    securityContext: Type.Optional(SecurityContextSchema),
    /** The sandbox's one volume (of `volumeClaimTemplates`, or of `volumes` naming an existing one) is mounted at its mountPath (default /data). */
    volumeMounts: Type.Optional(
      Type.Array(
        Type.Object(
          { name: Type.String({ maxLength: 63 }), mountPath: Type.String({ maxLength: 4096, pattern: '^/' }), readOnly: Type.Optional(Type.Boolean()) },
          Strict,
        ),
        { maxItems: 1 },
      ),
    ),
    ports: Type.Optional(
      Type.Array(
        Type.Object(
          {
            containerPort: Type.Integer({ minimum: 1, maximum: 65535 }),
            name: Type.Optional(Type.String({ maxLength: 15 })),
            protocol: Type.Optional(Type.Literal('TCP')),
          },
          Strict,
        ),
        { maxItems: 64 },
      ),
    ),
  },
  Strict,
);

export const PodSpecSchema = Type.Object(
  {
    runtimeClassName: Type.Optional(Type.String({ maxLength: 63 })),
    containers: Type.Array(ContainerSchema, { minItems: 1, maxItems: 1 }),
    hostname: Type.Optional(Type.String({ maxLength: 63 })),
    securityContext: Type.Optional(SecurityContextSchema),
    /** Moat: one existing named volume (`moat volume create`, a retained or restored one) instead of a volumeClaimTemplate. */
    volumes: Type.Optional(
      Type.Array(
        Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 63 }),
            persistentVolumeClaim: Type.Object(
              { claimName: Type.String({ minLength: 1, maxLength: 63 }), readOnly: Type.Optional(Type.Literal(false)) },
              Strict,
            ),
          },
          Strict,
        ),
        { maxItems: 1 },
      ),
    ),
    // Accepted for YAML portability with Kubernetes; they have no effect on one host.
    restartPolicy: Type.Optional(Type.String()),
    automountServiceAccountToken: Type.Optional(Type.Boolean()),
    terminationGracePeriodSeconds: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  Strict,
);

export const VolumeClaimTemplateSchema = Type.Object(
  {
    metadata: Type.Object({ name: Type.String({ maxLength: 63 }), labels: Type.Optional(StringMap), annotations: Type.Optional(StringMap) }, Strict),
    spec: Type.Object(
      {
        accessModes: Type.Optional(Type.Array(Type.String())),
        storageClassName: Type.Optional(Type.String()),
        resources: Type.Object({ requests: Type.Object({ storage: Quantity }, Strict) }, Strict),
      },
      Strict,
    ),
  },
  Strict,
);

export const PodTemplateSchema = Type.Object(
  {
    metadata: Type.Optional(Type.Object({ labels: Type.Optional(StringMap), annotations: Type.Optional(StringMap) }, Strict)),
    spec: PodSpecSchema,
  },
  Strict,
);

export const SecretRefSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63 }),
    exposeAsEnv: Type.Optional(Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
  },
  Strict,
);

/**
 * Moat: what happens to a sandbox nobody uses (no exec, file call or port
 * connection): each step that many seconds after the last use. Steps given
 * together must come in this order.
 */
export const IdlePolicySchema = Type.Object(
  {
    pauseAfterSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 366 * 86400 })),
    hibernateAfterSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 366 * 86400 })),
    deleteAfterSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 366 * 86400 })),
  },
  Strict,
);
export type IdlePolicy = Static<typeof IdlePolicySchema>;

export const SandboxSpecSchema = Type.Object(
  {
    podTemplate: PodTemplateSchema,
    volumeClaimTemplates: Type.Optional(Type.Array(VolumeClaimTemplateSchema, { maxItems: 1 })),
    shutdownTime: Type.Optional(Type.String({ format: 'date-time' })),
    shutdownPolicy: Type.Optional(Type.Union([Type.Literal('Delete'), Type.Literal('Retain')])),
    replicas: Type.Optional(Type.Integer({ minimum: 0, maximum: 1 })),
    /** StatefulSet's field: whether the volume made from `volumeClaimTemplates` outlives the sandbox (default Delete). */
    persistentVolumeClaimRetentionPolicy: Type.Optional(
      Type.Object(
        {
          whenDeleted: Type.Optional(Type.Union([Type.Literal('Retain'), Type.Literal('Delete')])),
          whenScaled: Type.Optional(Type.Union([Type.Literal('Retain'), Type.Literal('Delete')])),
        },
        Strict,
      ),
    ),
    /** Moat: where the sandbox may connect through the egress proxy (default deny-all). */
    egressPolicy: Type.Optional(EgressPolicySchema),
    /** Moat: this sandbox's share of the egress proxy. */
    egressLimits: Type.Optional(EgressLimitsSchema),
    /**
     * Moat: secrets of the namespace the gateway may use for this sandbox (never
     * placed inside it); `exposeAsEnv` opts one into its environment, audited.
     */
    secrets: Type.Optional(Type.Array(SecretRefSchema, { maxItems: 64 })),
    idlePolicy: Type.Optional(IdlePolicySchema),
  },
  Strict,
);

export const ConditionSchema = Type.Object({
  type: Type.String(),
  status: Type.Union([Type.Literal('True'), Type.Literal('False'), Type.Literal('Unknown')]),
  reason: Type.String(),
  message: Type.String(),
  lastTransitionTime: Type.String(),
});

export const SandboxPhases = ['Pending', 'Running', 'Paused', 'Hibernated', 'Failed', 'Terminating'] as const;
export type SandboxPhase = (typeof SandboxPhases)[number];

export const SandboxStatusSchema = Type.Object({
  phase: Type.Union(SandboxPhases.map((p) => Type.Literal(p))),
  conditions: Type.Array(ConditionSchema),
  startTime: Type.Optional(Type.String()),
  runtimeClassName: Type.Optional(Type.String()),
  /**
   * The image the sandbox runs, pinned at create; `env` and `workingDir` are
   * its ENV and WORKDIR, which execs start with; `ports` its EXPOSEd TCP ports.
   */
  image: Type.Optional(
    Type.Object({
      name: Type.String(),
      digest: Type.String(),
      env: Type.Optional(Type.Record(Type.String(), Type.String())),
      workingDir: Type.Optional(Type.String()),
      ports: Type.Optional(Type.Array(Type.Integer())),
    }),
  ),
  /** The sandbox's address in its own network namespace, and the egress proxy it must use. */
  network: Type.Optional(Type.Object({ address: Type.String(), proxy: Type.String() })),
  resourceUsage: Type.Optional(Type.Object({ memoryBytes: Type.Number(), cpuSeconds: Type.Number(), pids: Type.Number() })),
});

export const SandboxSchema = Type.Object(
  {
    apiVersion: Type.Optional(Type.Union(SANDBOX_API_VERSIONS.map((v) => Type.Literal(v)))),
    kind: Type.Optional(Type.Literal('Sandbox')),
    metadata: ObjectMetaSchema,
    spec: SandboxSpecSchema,
    status: Type.Optional(Type.Unknown()), // clients may echo it; the server owns it
  },
  Strict,
);

export type SandboxInput = Static<typeof SandboxSchema>;
export type SandboxSpec = Static<typeof SandboxSpecSchema>;
export type SandboxStatus = Static<typeof SandboxStatusSchema>;
export type Condition = Static<typeof ConditionSchema>;

/** A sandbox as stored and served: metadata filled in, status owned by the server. */
export interface Sandbox {
  apiVersion: typeof SANDBOX_API_VERSION;
  kind: 'Sandbox';
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    creationTimestamp: string;
    resourceVersion: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: SandboxSpec;
  status: SandboxStatus;
}
