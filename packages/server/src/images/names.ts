import { IMAGE_CATALOG, formatReference, parseReference, type ImageReference } from '@moat/runtime';

/**
 * How an `image:` is looked up. A name with a registry host (`host:5000/app:v1`)
 * is a registry reference, recorded under its canonical form. Any other name
 * (`my-agent`, `python:3.12`) is first a name in Moat's own store, the way
 * Docker looks in its local images before Docker Hub; a name without a tag
 * means `:latest`. Catalog names (`base`) are exactly themselves.
 */
export interface ImageName {
  /** The key images are recorded under in a namespace. */
  key: string;
  /** Where it is pulled from when it is not in the store (undefined for catalog images, which are built). */
  ref?: ImageReference;
  pinned: boolean;
  /** Whether the name says its registry; one that does not would be pulled from Docker Hub. */
  qualified: boolean;
}

export function imageName(s: string): ImageName {
  const bare = s.replace(/:latest$/, '');
  if (IMAGE_CATALOG[bare]) return { key: bare, pinned: false, qualified: false };
  const ref = parseReference(s);
  const first = s.split('/')[0]!;
  const hasHost = s.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  const pinned = s.includes('@');
  if (hasHost) return { key: formatReference(ref), ref, pinned, qualified: true };
  const tagged = pinned || s.slice(s.lastIndexOf('/') + 1).includes(':');
  return { key: tagged ? s : `${s}:latest`, ref, pinned, qualified: false };
}

/** Kubernetes' default: `Always` for `:latest` (or no tag), `IfNotPresent` otherwise; an image pinned by digest never changes. */
export function pullPolicy(name: ImageName, given: string | undefined): 'Always' | 'IfNotPresent' | 'Never' {
  if (given === 'Always' || given === 'IfNotPresent' || given === 'Never') return given;
  if (name.pinned) return 'IfNotPresent';
  return name.key.endsWith(':latest') ? 'Always' : 'IfNotPresent';
}
