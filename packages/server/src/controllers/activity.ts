/**
 * When each sandbox was last used through the API (exec, file calls, port
 * connections) and how many of those uses are still going on: what idle
 * reclaim measures. Keyed by sandbox uid, which no two servers share, so one
 * table serves every server in a process (tests run several).
 */
const uses = new Map<string, { last: number; open: number }>();

const entry = (uid: string) => {
  let e = uses.get(uid);
  if (!e) uses.set(uid, (e = { last: Date.now(), open: 0 }));
  return e;
};

export function touch(uid: string): void {
  entry(uid).last = Date.now();
}

/** A use that lasts until the returned function is called (an exec, a relayed connection). */
export function hold(uid: string): () => void {
  const e = entry(uid);
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
export function idleMs(uid: string, now = Date.now()): number {
  const e = entry(uid);
  return e.open > 0 ? 0 : now - e.last;
}

export function forget(uid: string): void {
  uses.delete(uid);
}
