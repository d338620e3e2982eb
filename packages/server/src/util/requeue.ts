/**
 * Time-based work as requeue-after (controller-runtime's RequeueAfter): one
 * timer per key, the earliest asked for wins, and nothing polls. A key's work
 * runs once when its time comes; the work itself asks again if it must.
 */
export class Requeue {
  private readonly timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private stopped = false;

  constructor(private readonly run: (key: string) => Promise<void> | void) {}

  /** Look at `key` again in `ms` (at once when ≤ 0), unless it is already due sooner. */
  after(key: string, ms: number): void {
    if (this.stopped) return;
    const at = Date.now() + Math.max(0, ms);
    const current = this.timers.get(key);
    if (current && current.at <= at) return;
    if (current) clearTimeout(current.timer);
    // Timers beyond setTimeout's range (24.8 days) are capped: the work then simply asks again.
    const timer = setTimeout(
      () => {
        this.timers.delete(key);
        void this.run(key);
      },
      Math.min(at - Date.now(), 2 ** 31 - 1),
    );
    timer.unref();
    this.timers.set(key, { at, timer });
  }

  cancel(key: string): void {
    const current = this.timers.get(key);
    if (current) clearTimeout(current.timer);
    this.timers.delete(key);
  }

  /** When `key` is next due (ms since the epoch), for tests and status. */
  dueAt(key: string): number | undefined {
    return this.timers.get(key)?.at;
  }

  stop(): void {
    this.stopped = true;
    for (const { timer } of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }
}
