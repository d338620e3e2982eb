import { CONDITION, type Condition, type ConditionReason, type SandboxStatus } from '@moat/core';

export function readyCondition(status: Condition['status'], reason: ConditionReason, message = ''): Condition {
  return { type: CONDITION.Ready, status, reason, message, lastTransitionTime: new Date().toISOString() };
}

/** Set a condition, keeping lastTransitionTime when its status did not change. */
export function withCondition(s: SandboxStatus, c: Condition): SandboxStatus {
  const old = s.conditions.find((x) => x.type === c.type);
  const next = old && old.status === c.status ? { ...c, lastTransitionTime: old.lastTransitionTime } : c;
  return { ...s, conditions: [...s.conditions.filter((x) => x.type !== c.type), next] };
}

export const isReady = (s: SandboxStatus) => s.conditions.some((c) => c.type === CONDITION.Ready && c.status === 'True');
