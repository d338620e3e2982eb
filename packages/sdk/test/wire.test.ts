import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type * as core from '@moat/core';
import { WIRE_FILE, renderWire } from '../../../scripts/gen-sdk-types.js';
import type * as sdk from '../src/index.js';

test('wire.gen.ts is what scripts/gen-sdk-types.ts makes of @moat/core (else run `npm run gen:sdk`)', () => {
  assert.equal(readFileSync(WIRE_FILE, 'utf8'), renderWire());
});

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

test('the generated types are those of core (checked by the type checker)', () => {
  const same: [
    Same<sdk.SandboxSpec, core.SandboxSpec>,
    Same<sdk.SandboxStatus, core.SandboxStatus>,
    Same<sdk.Condition, core.Condition>,
    Same<sdk.SandboxTemplateSpec, core.SandboxTemplateSpec>,
    Same<sdk.SandboxClaimSpec, core.SandboxClaimSpec>,
    Same<sdk.SandboxWarmPoolSpec, core.SandboxWarmPoolSpec>,
    Same<sdk.ConditionReason, core.ConditionReason>,
    Same<typeof sdk.SANDBOX_API_VERSION, typeof core.SANDBOX_API_VERSION>,
  ] = [true, true, true, true, true, true, true, true];
  assert.ok(same.every(Boolean));
});
