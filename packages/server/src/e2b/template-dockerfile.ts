import { posix } from 'node:path';
import { badRequest } from '@moat/core';

/** One step of an E2B template build, as the SDKs send it. */
export interface E2bStep {
  type: string;
  args?: string[];
  filesHash?: string;
  force?: boolean;
}

/** Where a COPY step's uploaded files are in the build context: each upload under its own hash. */
export const filesDir = (hash: string) => `files/${hash}`;

export interface Translation {
  dockerfile: string;
  /** For each Dockerfile instruction, the E2B step it is part of: `base` (FROM) or the step's number, 1 for the first. */
  labels: string[];
  /** The uploads the COPY steps read. */
  hashes: string[];
}

/** The E2B SDKs' own base image (`fromBaseImage()`, and what a template without a FROM starts on) is Moat's `base`. */
const E2B_IMAGES: Record<string, string> = { 'e2bdev/base': 'base', 'e2bdev/base:latest': 'base' };
/** As the builder checks FROM: an image name, no `$` to expand, no transport. */
const REFERENCE = /^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$/;
const USER = /^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/;
const MODE = /^0?[0-7]{3,4}$/;
export const HASH = /^[a-f0-9]{64}$/;

export const imageFor = (fromImage: string) => E2B_IMAGES[fromImage] ?? fromImage;

/**
 * An E2B build as one Dockerfile. Steps keep Dockerfile semantics (they run
 * as the image's USER, root unless a step set another); a RUN for another
 * user switches to it and back. `baseUser` is the base image's USER.
 */
export function translate(from: string, steps: E2bStep[], baseUser = ''): Translation {
  if (!REFERENCE.test(from)) throw badRequest(`fromImage ${JSON.stringify(from)} is not an image name`);
  const lines: string[] = [`FROM ${from}`];
  const labels = ['base'];
  const hashes = new Set<string>();
  let user = baseUser || 'root';
  steps.forEach((s, i) => {
    const what = `step ${i + 1} (${s.type})`;
    const args = s.args ?? [];
    const add = (line: string) => {
      lines.push(line);
      labels.push(String(i + 1));
    };
    switch (s.type) {
      case 'RUN': {
        const [cmd, as] = args;
        if (!cmd) throw badRequest(`${what}: no command`);
        if (cmd.includes('\0')) throw badRequest(`${what}: the command holds a NUL byte`);
        const other = as !== undefined && as !== '' && as !== user;
        if (other) add(`USER ${checked(as, USER, what, 'user')}`);
        add(`RUN ${shellForm(cmd) ? cmd : JSON.stringify(['/bin/sh', '-c', cmd])}`);
        if (other) add(`USER ${user}`);
        break;
      }
      case 'COPY': {
        const [src, dest, owner, mode] = args;
        if (!src || !dest) throw badRequest(`${what}: needs a source and a destination`);
        if (!s.filesHash || !HASH.test(s.filesHash)) throw badRequest(`${what}: filesHash must be 64 lower-case hex digits`);
        const rel = posix.normalize(src);
        if (src.startsWith('/') || rel === '..' || rel.startsWith('../') || /[\0\n]/.test(src + dest))
          throw badRequest(`${what}: the source ${JSON.stringify(src)} must be a path inside the template's file context`);
        const flags = [...(owner ? [`--chown=${checked(owner, USER, what, 'user')}`] : []), ...(mode ? [`--chmod=${checked(mode, MODE, what, 'mode')}`] : [])];
        add(['COPY', ...flags, JSON.stringify([`${filesDir(s.filesHash)}/${rel}`, dest])].join(' '));
        hashes.add(s.filesHash);
        break;
      }
      case 'ENV': {
        if (args.length === 0 || args.length % 2) throw badRequest(`${what}: expects name, value pairs`);
        const pairs: string[] = [];
        for (let k = 0; k < args.length; k += 2) pairs.push(`${checked(args[k]!, ENV_NAME, what, 'variable name')}=${quoted(args[k + 1]!, what)}`);
        add(`ENV ${pairs.join(' ')}`);
        break;
      }
      case 'WORKDIR':
        add(`WORKDIR ${oneLine(args[0], what)}`);
        break;
      case 'USER':
        user = checked(args[0] ?? '', USER, what, 'user');
        add(`USER ${user}`);
        break;
      default:
        throw badRequest(`${what}: Moat does not know this step type (it builds RUN, COPY, ENV, WORKDIR and USER)`);
    }
  });
  return { dockerfile: `${lines.join('\n')}\n`, labels, hashes: [...hashes] };
}

/** A command that reads the same as a Dockerfile's shell form (so build logs show it as written), else the exec form. */
const shellForm = (cmd: string) => !/[\r\n]/.test(cmd) && !cmd.trimStart().startsWith('[') && !cmd.trimEnd().endsWith('\\') && cmd.trim() !== '';

function checked(value: string, pattern: RegExp, what: string, noun: string): string {
  if (!pattern.test(value)) throw badRequest(`${what}: ${JSON.stringify(value)} is not a valid ${noun}`);
  return value;
}

function oneLine(value: string | undefined, what: string): string {
  if (!value?.trim() || /[\0\r\n]/.test(value)) throw badRequest(`${what}: expects one line of text`);
  return value;
}

/** A Dockerfile ENV value in double quotes: `$` stays literal, as the SDK's value was meant. */
function quoted(value: string, what: string): string {
  if (/[\0\r\n]/.test(value)) throw badRequest(`${what}: a value must be one line`);
  return `"${value.replace(/[\\"$]/g, '\\$&')}"`;
}
