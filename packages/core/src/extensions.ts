import { Type, type Static } from '@sinclair/typebox';
import { EXTENSIONS_API_VERSIONS } from './api.js';
import { EgressLimitsSchema, EgressPolicySchema } from './egress.js';
import { EnvVarSchema, IdlePolicySchema, ObjectMetaSchema, PodTemplateSchema, SecretRefSchema, VolumeClaimTemplateSchema, type Condition } from './sandbox.js';

// SandboxTemplate, SandboxClaim and SandboxWarmPool, shaped like agent-sandbox's extensions API (its versions: api.ts).

const Strict = { additionalProperties: false } as const;
const StringMap = Type.Record(Type.String({ maxLength: 253 }), Type.String({ maxLength: 4096 }));
const Ref = Type.Object({ name: Type.String({ minLength: 1, maxLength: 253 }) }, Strict);
const ApiVersion = Type.Optional(Type.Union(EXTENSIONS_API_VERSIONS.map((v) => Type.Literal(v))));
const Policy = <T extends string>(...values: T[]) => Type.Union(values.map((v) => Type.Literal(v)));

export const SandboxTemplateSpecSchema = Type.Object(
  {
    podTemplate: PodTemplateSchema,
    volumeClaimTemplates: Type.Optional(Type.Array(VolumeClaimTemplateSchema, { maxItems: 1 })),
    /** Whether a claim may add or override environment variables (agent-sandbox semantics). */
    envVarsInjectionPolicy: Type.Optional(Policy('Disallowed', 'Allowed', 'Overrides')),
    volumeClaimTemplatesPolicy: Type.Optional(Policy('Disallowed', 'Allowed', 'Overrides')),
    egressPolicy: Type.Optional(EgressPolicySchema),
    egressLimits: Type.Optional(EgressLimitsSchema),
    /** Moat: as a sandbox's `spec.secrets`. */
    secrets: Type.Optional(Type.Array(SecretRefSchema, { maxItems: 64 })),
    /** Moat: a sandbox made from this template is deleted this long after it was claimed, unless the claim says otherwise. */
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 366 * 86400 })),
    /** Moat: as a sandbox's `spec.idlePolicy`, for every sandbox made from the template. */
    idlePolicy: Type.Optional(IdlePolicySchema),
    // Kubernetes network objects have no meaning on one host; accepted so the same YAML applies.
    networkPolicy: Type.Optional(Type.Unknown()),
    networkPolicyManagement: Type.Optional(Policy('Managed', 'Unmanaged')),
    service: Type.Optional(Type.Boolean()),
  },
  Strict,
);

export const SandboxTemplateSchema = Type.Object(
  {
    apiVersion: ApiVersion,
    kind: Type.Optional(Type.Literal('SandboxTemplate')),
    metadata: ObjectMetaSchema,
    spec: SandboxTemplateSpecSchema,
    status: Type.Optional(Type.Unknown()),
  },
  Strict,
);

export const ClaimLifecycleSchema = Type.Object(
  {
    shutdownTime: Type.Optional(Type.String({ format: 'date-time' })),
    shutdownPolicy: Type.Optional(Policy('Delete', 'DeleteForeground', 'Retain')),
    ttlSecondsAfterFinished: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  Strict,
);

export const SandboxClaimSpecSchema = Type.Object(
  {
    /** v1alpha1: the template to make the sandbox from. */
    sandboxTemplateRef: Type.Optional(Ref),
    /** v1beta1: the pool to take the sandbox from (its template is used for a cold start). */
    warmPoolRef: Type.Optional(Ref),
    /** v1alpha1: "default" (any pool of the template), "none" (always cold), or a pool's name. */
    warmpool: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })),
    lifecycle: Type.Optional(ClaimLifecycleSchema),
    additionalPodMetadata: Type.Optional(Type.Object({ labels: Type.Optional(StringMap), annotations: Type.Optional(StringMap) }, Strict)),
    env: Type.Optional(
      Type.Array(
        Type.Object(
          { name: EnvVarSchema.properties.name, value: Type.String({ maxLength: 32768 }), containerName: Type.Optional(Type.String({ maxLength: 63 })) },
          Strict,
        ),
        { maxItems: 1024 },
      ),
    ),
    volumeClaimTemplates: Type.Optional(Type.Array(VolumeClaimTemplateSchema, { maxItems: 1 })),
  },
  Strict,
);

export const SandboxClaimSchema = Type.Object(
  {
    apiVersion: ApiVersion,
    kind: Type.Optional(Type.Literal('SandboxClaim')),
    metadata: ObjectMetaSchema,
    spec: SandboxClaimSpecSchema,
    status: Type.Optional(Type.Unknown()),
  },
  Strict,
);

export const SandboxWarmPoolSpecSchema = Type.Object(
  {
    replicas: Type.Integer({ minimum: 0, maximum: 500 }),
    sandboxTemplateRef: Ref,
    updateStrategy: Type.Optional(Type.Object({ type: Type.Optional(Policy('OnReplenish', 'Recreate')) }, Strict)),
  },
  Strict,
);

export const SandboxWarmPoolSchema = Type.Object(
  {
    apiVersion: ApiVersion,
    kind: Type.Optional(Type.Literal('SandboxWarmPool')),
    metadata: ObjectMetaSchema,
    spec: SandboxWarmPoolSpecSchema,
    status: Type.Optional(Type.Unknown()),
  },
  Strict,
);

export type SandboxTemplateSpec = Static<typeof SandboxTemplateSpecSchema>;
export type SandboxClaimSpec = Static<typeof SandboxClaimSpecSchema>;
export type SandboxWarmPoolSpec = Static<typeof SandboxWarmPoolSpecSchema>;

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  creationTimestamp: string;
  resourceVersion: string;
  generation: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** A stored extension object: metadata filled in, status owned by the server. */
export interface ExtensionObject<K extends string, S, St> {
  apiVersion: string;
  kind: K;
  metadata: ObjectMeta;
  spec: S;
  status: St;
}

export interface SandboxTemplateStatus {
  conditions?: Condition[];
}

export interface SandboxClaimStatus {
  conditions: Condition[];
  sandbox?: { name?: string; podIPs?: string[] };
  /** Moat: the pool the sandbox was taken from, absent for a cold start. */
  warmPool?: string;
}

export interface SandboxWarmPoolStatus {
  replicas: number;
  readyReplicas: number;
  selector: string;
  conditions: Condition[];
}

export type SandboxTemplate = ExtensionObject<'SandboxTemplate', SandboxTemplateSpec, SandboxTemplateStatus>;
export type SandboxClaim = ExtensionObject<'SandboxClaim', SandboxClaimSpec, SandboxClaimStatus>;
export type SandboxWarmPool = ExtensionObject<'SandboxWarmPool', SandboxWarmPoolSpec, SandboxWarmPoolStatus>;
export type ExtensionKind = 'SandboxTemplate' | 'SandboxClaim' | 'SandboxWarmPool';
