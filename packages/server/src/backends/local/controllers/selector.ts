import { badRequest } from '@moat/core';

/** `k=v,k2=v2` and `k!=v` equality selectors, as kubectl's -l. */
export function parseSelector(sel?: string): (labels: Record<string, string>) => boolean {
  if (!sel) return () => true;
  const terms = sel.split(',').map((t) => {
    const m = /^\s*([^!=\s]+)\s*(!=|==|=)\s*([^\s]*)\s*$/.exec(t);
    if (!m) throw badRequest(`invalid labelSelector term "${t}": use key=value or key!=value`);
    return { key: m[1]!, neg: m[2] === '!=', value: m[3]! };
  });
  return (labels) => terms.every((t) => (labels[t.key] === t.value) !== t.neg);
}
