import { CONDITION, invalid, type IdlePolicy, type Sandbox } from '@moat/core';

/**
 * Pure rules of the sandbox lifecycle: time arithmetic and spec checks with no
 * store, driver or clock of their own, so every controller can use them and
 * tests can call them directly (as agent-sandbox's internal/lifecycle/expiry.go).
 */

const STEPS = ['pauseAfterSeconds', 'hibernateAfterSeconds', 'deleteAfterSeconds'] as const;

export type IdleStep = 'pause' | 'hibernate' | 'delete';

/** Shut down at its shutdownTime under shutdownPolicy Retain, and not extended since. */
export const isExpired = (s: Sandbox) => s.status.conditions.some((c) => c.type === CONDITION.Expired && c.status === 'True');

/** Idle steps given together must come in order: pause, then hibernate, then delete. */
export function checkIdlePolicy(p: IdlePolicy, field: string): void {
  const given = STEPS.filter((k) => p[k] !== undefined);
  for (let i = 1; i < given.length; i++) {
    const [a, b] = [given[i - 1]!, given[i]!];
    if (p[b]! <= p[a]!) throw invalid(`${field}: ${b} (${p[b]}) must be later than ${a} (${p[a]})`);
  }
}

/** The furthest idle step a sandbox unused for `idle` ms has reached and not yet taken. */
export function idleStep(s: Sandbox, idle: number): IdleStep | undefined {
  const p = s.spec.idlePolicy;
  if (!p || idle <= 0) return undefined;
  const due = (k: (typeof STEPS)[number]) => p[k] !== undefined && idle >= p[k]! * 1000;
  const phase = s.status.phase;
  if (due('deleteAfterSeconds')) return 'delete';
  if (isExpired(s)) return undefined;
  if (due('hibernateAfterSeconds') && (phase === 'Running' || phase === 'Paused')) return 'hibernate';
  if (due('pauseAfterSeconds') && phase === 'Running') return 'pause';
  return undefined;
}

/**
 * How long after `idle` ms without use the next idle step of the sandbox falls due, if one can: when the
 * lifecycle controller should look at it again. A use in between moves the step later; the controller
 * then finds nothing due and asks again.
 */
export function nextIdleStepIn(s: Sandbox, idle: number): number | undefined {
  const p = s.spec.idlePolicy;
  if (!p) return undefined;
  const phase = s.status.phase;
  const pending = STEPS.filter((k) => {
    if (p[k] === undefined) return false;
    if (k === 'deleteAfterSeconds') return true;
    if (isExpired(s)) return false;
    return k === 'hibernateAfterSeconds' ? phase === 'Running' || phase === 'Paused' : phase === 'Running';
  }).map((k) => p[k]! * 1000 - idle);
  const future = pending.filter((ms) => ms > 0);
  return future.length ? Math.min(...future) : undefined;
}

/** Milliseconds until an RFC 3339 time (≤ 0 once it has passed), or undefined without one. */
export function msUntil(time: string | undefined, now: number): number | undefined {
  return time ? Date.parse(time) - now : undefined;
}
