import { invalid } from './errors.js';

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
const DECIMAL: Record<string, number> = { k: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/** Parse a Kubernetes quantity of bytes ("512Mi", "1G", "1048576"). */
export function parseBytes(q: string | number, field: string): number {
  if (typeof q === 'number') return q;
  const m = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q.trim());
  if (!m) throw invalid(`${field}: "${q}" is not a quantity (examples: 512Mi, 2Gi, 1000000)`);
  const unit = m[2] ? (BINARY[m[2]] ?? DECIMAL[m[2]]) : 1;
  return Math.round(Number(m[1]) * unit!);
}

/** Parse CPU cores ("1", "0.5", "500m") into millicores. */
export function parseMillicores(q: string | number, field: string): number {
  if (typeof q === 'number') return Math.round(q * 1000);
  const m = /^([0-9]+(?:\.[0-9]+)?)(m)?$/.exec(q.trim());
  if (!m) throw invalid(`${field}: "${q}" is not a CPU quantity (examples: 1, 0.5, 500m)`);
  return m[2] ? Math.round(Number(m[1])) : Math.round(Number(m[1]) * 1000);
}

export function formatBytes(n: number): string {
  for (const [unit, size] of [
    ['Gi', 2 ** 30],
    ['Mi', 2 ** 20],
    ['Ki', 2 ** 10],
  ] as const) {
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  }
  return String(n);
}
