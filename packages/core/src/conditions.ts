/**
 * The condition types, condition reasons and event reasons Moat writes, as
 * constants. The strings are wire format: clients match on them, so a value
 * never changes once released. Clients must still accept reasons they do not
 * know (a newer server may add some), which is why `Condition.reason` stays a
 * string on the wire.
 *
 * This module imports nothing: the SDK's generated wire file includes it as it
 * is (scripts/gen-sdk-types.ts).
 */

/** The types of `status.conditions[]`. */
export const CONDITION = {
  /** Every kind: whether the object can be used now (a sandbox runs and passed its readiness probe, a claim's sandbox is ready, a pool is full). */
  Ready: 'Ready',
  /** Sandbox: its shutdownTime passed and it was kept (shutdownPolicy Retain); extending it clears this. */
  Expired: 'Expired',
  /** Sandbox: it was stopped to free its memory, and whether its processes and memory were kept. */
  Hibernated: 'Hibernated',
  /** Sandbox: its runtime works, but slower than it should (a microVM emulated without KVM). */
  RuntimeDegraded: 'RuntimeDegraded',
  /** Claim: whether its sandbox came from a warm pool, and why not. */
  WarmPool: 'WarmPool',
  /** Claim: whether the template it was made from still exists. */
  TemplateAvailable: 'TemplateAvailable',
} as const;
export type ConditionType = (typeof CONDITION)[keyof typeof CONDITION];

/** The reasons of conditions, by the condition (and kind) that uses them. */
export const REASON = {
  // Sandbox and claim: Ready
  /** Ready=False: the sandbox is being created (a claim's, until its sandbox says more). */
  Creating: 'Creating',
  /** Ready=True: the sandbox runs, and its readiness probe (if any) passed. */
  SandboxRunning: 'SandboxRunning',
  /** Ready=False: the sandbox runs, but its readiness probe has not passed yet. */
  ReadinessProbePending: 'ReadinessProbePending',
  /** Ready=False: the readiness probe failed failureThreshold times in a row; probing goes on. */
  ReadinessProbeFailing: 'ReadinessProbeFailing',
  /** Ready=False: the sandbox's processes are frozen (pause). */
  Paused: 'Paused',
  /** Ready=False: the sandbox is hibernated; exec, file calls and port connections wake it. */
  Hibernated: 'Hibernated',
  /** Ready=False: the sandbox's shutdownTime passed and it was kept (see Expired). */
  SandboxExpired: 'SandboxExpired',
  /** Ready=False: the sandbox could not start (phase Failed); the message says why. */
  StartFailed: 'StartFailed',
  /** Ready=False: the sandbox is being deleted. */
  Deleting: 'Deleting',

  // Claim: Ready (besides its sandbox's reasons, which it mirrors)
  /** Ready=False: the claim is being served. */
  Pending: 'Pending',
  /** Ready=False: the claim's shutdownTime passed; its sandbox was deleted (shutdownPolicy Retain keeps the claim). */
  ClaimExpired: 'ClaimExpired',
  /** Ready=False: the claim's sandbox no longer exists. */
  SandboxNotFound: 'SandboxNotFound',
  /** Ready=False: the warm pool the claim names does not exist. */
  WarmPoolNotFound: 'WarmPoolNotFound',
  /** Ready=False: the claim names a warm pool and a template, and the pool holds another template. */
  WarmPoolMismatch: 'WarmPoolMismatch',
  /** Ready=False: the claim asks for what its template does not allow (env, volumes). */
  InvalidClaim: 'InvalidClaim',
  /** Ready=False: a sandbox with the claim's name already exists. */
  SandboxNameConflict: 'SandboxNameConflict',
  /** Ready=False: the template does not make a valid sandbox. */
  InvalidTemplate: 'InvalidTemplate',

  // Claim and pool: Ready; claim: TemplateAvailable
  /** The template a claim or pool names does not exist (TemplateAvailable=False: it was deleted after the claim was served). */
  TemplateNotFound: 'TemplateNotFound',
  /** The template's image is not on this server (images can be built later). */
  ImageNotFound: 'ImageNotFound',

  // Pool: Ready
  /** Ready=True: every replica is ready. */
  PoolFull: 'PoolFull',
  /** Ready=False: the pool is starting members; the message counts the ready ones. */
  Filling: 'Filling',
  /** Ready=False: a member failed to start; it is replaced with back-off. */
  SandboxStartFailed: 'SandboxStartFailed',
  /** Ready=False: a member could not be created; retried with back-off. */
  SandboxCreateFailed: 'SandboxCreateFailed',

  // Claim: WarmPool
  /** WarmPool=True: the sandbox was taken from a warm pool. */
  FromWarmPool: 'FromWarmPool',
  /** WarmPool=False: the claim changes what a pooled sandbox cannot change once running (env with a main command, volumes). */
  ColdStartRequired: 'ColdStartRequired',
  /** WarmPool=False: the claim asked for a fresh sandbox (warmpool: none). */
  WarmPoolDisabled: 'WarmPoolDisabled',
  /** WarmPool=False: the pools of the template had no ready member, so one was started cold. */
  PoolExhausted: 'PoolExhausted',
  /** WarmPool=False: no pool holds the template, so one was started cold. */
  NoWarmPool: 'NoWarmPool',

  // Sandbox: Expired
  /** Expired=True: the shutdownTime passed. */
  ShutdownTimeReached: 'ShutdownTimeReached',
  /** Expired=False: the shutdownTime was moved later; the sandbox can be used again. */
  Extended: 'Extended',

  // Sandbox: Hibernated
  /** Hibernated=True: processes and memory were saved to disk. */
  Checkpointed: 'Checkpointed',
  /** Hibernated=True: the runtime could not checkpoint the workload; the disks were kept, memory was lost (the message says why). */
  StoppedWithDisks: 'StoppedWithDisks',
  /** Hibernated=False: woken with its processes and memory. */
  Restored: 'Restored',
  /** Hibernated=False: started again on its disks, without its memory (the message says why). */
  Restarted: 'Restarted',

  // Sandbox: RuntimeDegraded
  /** RuntimeDegraded=True: a microVM runs without KVM, emulated in software (slow). */
  SoftwareEmulation: 'SoftwareEmulation',
} as const;
export type ConditionReason = (typeof REASON)[keyof typeof REASON];

/** The reasons of a sandbox's events (`GET .../sandboxes/{name}/events`). */
export const EVENT_REASON = {
  /** The sandbox started (the message names the image digest). */
  Started: 'Started',
  /** Warning: the sandbox could not start. */
  Failed: 'Failed',
  /** The readiness probe passed. */
  Ready: 'Ready',
  /** Warning: the readiness probe fails. */
  Unhealthy: 'Unhealthy',
  /** A warm-pool member was taken by a claim. */
  Claimed: 'Claimed',
  Paused: 'Paused',
  Resumed: 'Resumed',
  /** Hibernated with its processes and memory (or found so after a control-plane restart). */
  Hibernated: 'Hibernated',
  /** Warning: hibernated with its disks only; memory was not saved. */
  HibernatedWithoutMemory: 'HibernatedWithoutMemory',
  /** Woken from hibernation (Warning when memory was not kept). */
  Woken: 'Woken',
  /** Warning: found not running after a control-plane restart; started again with its disks. */
  Restarting: 'Restarting',
  /** The idle policy paused the sandbox. */
  IdlePaused: 'IdlePaused',
  /** The idle policy hibernated the sandbox. */
  IdleHibernated: 'IdleHibernated',
  /** The shutdownTime passed, or the idle policy's deleteAfterSeconds. */
  Expired: 'Expired',
} as const;
export type EventReason = (typeof EVENT_REASON)[keyof typeof EVENT_REASON];
