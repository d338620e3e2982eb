export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function summary(samples: number[]) {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99) };
}

export async function time<T>(fn: () => Promise<T>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

export const ms = (n: number) => `${n.toFixed(1)} ms`;

export function row(label: string, samples: number[], baseline?: number[]) {
  const s = summary(samples);
  let line = `  ${label.padEnd(44)} p50 ${ms(s.p50).padStart(9)}  p95 ${ms(s.p95).padStart(9)}  p99 ${ms(s.p99).padStart(9)}  (n=${s.n})`;
  if (baseline) line += `  ×${(s.p50 / summary(baseline).p50).toFixed(2)} of baseline p50`;
  console.log(line);
  return s;
}
