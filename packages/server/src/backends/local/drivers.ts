import type { RuntimeDriver } from '@moat/runtime';
import type { RuntimeInfo } from '../types.js';
import type { Drivers } from './controllers/sandboxes.js';

/**
 * Checks every driver: those that work on this host serve sandboxes, the others say why not (in the
 * API's runtimes and in a create's 422). Long first-time work (`prepare`: the microVM kernel download
 * and KVM probe) runs in the background, so the API is up meanwhile; a runtime that then turns out to
 * run worse than it should here (`degraded`) gets a warning.
 */
export async function startDrivers(all: RuntimeDriver[], say: (line: string) => void): Promise<{ drivers: Drivers; runtimes: Record<string, RuntimeInfo> }> {
  const available = new Map<string, RuntimeDriver>();
  const runtimes: Record<string, RuntimeInfo> = {};
  for (const driver of all) {
    try {
      await driver.check();
      available.set(driver.name, driver);
      const detail = driver.describe?.();
      runtimes[driver.name] = { available: true, ...(detail ? { detail } : {}) };
    } catch (err) {
      runtimes[driver.name] = { available: false, reason: (err as Error).message };
      say(`warning: runtime ${driver.name} unavailable: ${(err as Error).message}`);
      continue;
    }
    Promise.resolve(driver.prepare?.()).then(
      async () => {
        const warning = await driver.degraded?.();
        if (warning) runtimes[driver.name] = { ...runtimes[driver.name]!, warning };
      },
      (err: Error) => say(`warning: ${driver.name}: ${err.message}`),
    );
  }
  const drivers: Drivers = {
    get: (name) => available.get(name),
    all: () => [...available.values()],
    unavailable: (name) => (available.has(name) ? undefined : (runtimes[name]?.reason ?? 'unknown runtime')),
  };
  return { drivers, runtimes };
}
