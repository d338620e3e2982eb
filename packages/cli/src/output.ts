import YAML from 'yaml';
import { CliError } from './errors.js';

export type ObjectFormat = 'json' | 'yaml';

export function render(value: unknown, format: ObjectFormat): string {
  return format === 'json' ? JSON.stringify(value, null, 2) + '\n' : YAML.stringify(value);
}

export function checkFormat<T extends string>(format: string | undefined, allowed: readonly T[]): T | undefined {
  if (format === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(format)) throw new CliError(`unknown output format "${format}": use one of ${allowed.join(', ')}`);
  return format as T;
}

/** Columns padded like kubectl's tabwriter: three spaces, no trailing blanks. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] + 3)))
      .join('')
      .trimEnd() + '\n';
  return line(headers) + rows.map(line).join('');
}

/** kubectl's HumanDuration: "45s", "3m20s", "5h10m", "3d4h", "400d". */
export function humanAge(timestamp: string | undefined, now = Date.now()): string {
  if (!timestamp) return '<unknown>';
  const t = Date.parse(timestamp);
  if (Number.isNaN(t)) return '<unknown>';
  const seconds = Math.floor((now - t) / 1000);
  if (seconds < -1) return '<invalid>';
  if (seconds < 0) return '0s';
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) return seconds % 60 === 0 ? `${minutes}m` : `${minutes}m${seconds % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) return hours % 24 === 0 ? `${Math.floor(hours / 24)}d` : `${Math.floor(hours / 24)}d${hours % 24}h`;
  const days = Math.floor(hours / 24);
  if (days < 365 * 2) return `${days}d`;
  const years = Math.floor(days / 365);
  if (years < 8) return days % 365 === 0 ? `${years}y` : `${years}y${days % 365}d`;
  return `${years}y`;
}

export function humanBytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) [n, i] = [n / 1024, i + 1];
  return i === 0 ? `${n}B` : `${n.toFixed(n < 10 ? 1 : 0)}${units[i]}`;
}

/** "sha256:0123456789abcdef..." → "sha256:0123456789ab" */
export function shortDigest(digest: string | undefined): string {
  if (!digest) return '';
  const [algo, hex] = digest.includes(':') ? digest.split(':', 2) : ['', digest];
  return `${algo ? algo + ':' : ''}${hex.slice(0, 12)}`;
}
