import { badRequest } from './errors.js';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Kubernetes object names for sandboxes: DNS-1123 labels, so they can become hostnames. */
export function isDns1123Label(s: string): boolean {
  return s.length > 0 && s.length <= 63 && DNS1123_LABEL.test(s);
}

export function assertName(s: string, what = 'name'): string {
  if (!isDns1123Label(s)) {
    throw badRequest(
      `invalid ${what} "${s}": must be a DNS-1123 label (lower-case letters, digits and '-', start and end alphanumeric, at most 63 characters)`,
    );
  }
  return s;
}

/**
 * A path inside a sandbox as given by a client: absolute, no `..` segment, no NUL.
 * Returned normalised (duplicate and trailing slashes removed). Symlinks are
 * resolved later inside the sandbox's own root, never on the host.
 */
export function sandboxPath(p: unknown, what = 'path'): string {
  if (typeof p !== 'string' || p.length === 0) throw badRequest(`${what} is required`);
  if (p.length > 4096) throw badRequest(`${what} is longer than 4096 characters`);
  if (p.includes('\0')) throw badRequest(`${what} contains a NUL byte`);
  if (!p.startsWith('/')) throw badRequest(`${what} "${p}" must be absolute (start with /)`);
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw badRequest(`${what} "${p}" must not contain ".." segments`);
  return '/' + parts.join('/');
}

export function randomSuffix(n = 5): string {
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[Math.floor(Math.random() * alphabet.length)];
  return s;
}
