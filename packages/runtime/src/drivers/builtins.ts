import { GvisorDriver } from './gvisor.js';
import { MicrovmDriver } from './microvm.js';
import { RuncDriver } from './runc.js';
import type { DriverContext, RuntimeDriver } from './types.js';

/** A runtime driver's class: it derives everything else from the context. */
export type DriverClass = new (ctx: DriverContext) => RuntimeDriver;

/**
 * Every runtime class Moat runs, in the order the server checks them. A new runtime class is its driver
 * module and one entry here, plus its name in core's RUNTIME_CLASSES (the API's enum; a test checks
 * that the two agree).
 */
export const BUILTIN_DRIVERS = [RuncDriver, GvisorDriver, MicrovmDriver] as const satisfies readonly DriverClass[];

/** The built-in drivers, each on its own folders under `ctx.root`. */
export function builtinDrivers(ctx: DriverContext): RuntimeDriver[] {
  return BUILTIN_DRIVERS.map((Driver) => new Driver(ctx));
}
