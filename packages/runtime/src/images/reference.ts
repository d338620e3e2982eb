import { MoatError } from '@moat/core';
import { isDigest } from './oci.js';

/** A parsed image reference, as Docker reads `registry/repo:tag@sha256:...`. */
export interface ImageReference {
  /** `host[:port]`; Docker Hub is `docker.io`. */
  registry: string;
  /** The path in the registry; Docker Hub's official images are under `library/`. */
  repository: string;
  tag?: string;
  digest?: string;
}

// The grammar of distribution's reference package, in its parts.
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^\w[\w.-]{0,127}$/;
const HOST = /^(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;

export const DOCKER_HUB = 'docker.io';

export function parseReference(s: string): ImageReference {
  const bad = (why: string) => new MoatError(400, 'InvalidImageName', `invalid image reference ${JSON.stringify(s)}: ${why}`);
  if (typeof s !== 'string' || !s || s.length > 4096) throw bad('expected [registry/]repository[:tag][@sha256:...]');
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw bad('the digest must be sha256: and 64 lowercase hex digits');
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`the tag ${JSON.stringify(tag)} is not valid (letters, digits, _ . -, at most 128)`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  // As Docker: the first part is a registry host only when it looks like one.
  if (parts.length > 1 && (parts[0]!.includes('.') || parts[0]!.includes(':') || parts[0] === 'localhost')) {
    registry = parts.shift()!;
    if (!HOST.test(registry)) throw bad(`${JSON.stringify(registry)} is not a registry host[:port]`);
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (!parts.length || parts.some((p) => !COMPONENT.test(p))) {
    throw bad(
      /[A-Z]/.test(rest) ? 'repository names must be lowercase' : 'repository path components are lowercase letters and digits, separated by . _ __ or -',
    );
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (repository.length > 255) throw bad('the repository name is longer than 255 characters');
  if (!tag && !digest) tag = 'latest';
  return { registry, repository, ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) };
}

/** The canonical form: `docker.io/library/alpine:3.20`, `host:5000/team/app@sha256:...`. */
export function formatReference(r: ImageReference): string {
  return `${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}
