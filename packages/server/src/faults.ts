/**
 * Fault injection for the crash-recovery tests: when MOAT_CRASH_AT names a
 * point (`create.inserted`, `teardown.destroyed`...), the server kills itself
 * there with SIGKILL, as a power cut would. Unset, as always outside those
 * tests, it does nothing.
 */
export function crashPoint(name: string): void {
  if (process.env.MOAT_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}
