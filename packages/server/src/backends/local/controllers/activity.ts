/**
 * When each sandbox was last used through the API (exec, file calls, port
 * connections) and how many of those uses are still going on: what idle
 * reclaim measures. One per server, handed to whoever records or reads use.
 */
export class Activity {
  private readonly uses = new Map<string, { last: number; open: number }>();

  private entry(uid: string) {
    let e = this.uses.get(uid);
    if (!e) this.uses.set(uid, (e = { last: Date.now(), open: 0 }));
    return e;
  }

  touch(uid: string): void {
    this.entry(uid).last = Date.now();
  }

  /** A use that lasts until the returned function is called (an exec, a relayed connection). */
  hold(uid: string): () => void {
    const e = this.entry(uid);
    e.open++;
    e.last = Date.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      e.open--;
      e.last = Date.now();
    };
  }

  /** How long the sandbox has not been used; 0 while a use goes on. A sandbox first seen now counts from now. */
  idleMs(uid: string, now = Date.now()): number {
    const e = this.entry(uid);
    return e.open > 0 ? 0 : now - e.last;
  }

  forget(uid: string): void {
    this.uses.delete(uid);
  }
}
