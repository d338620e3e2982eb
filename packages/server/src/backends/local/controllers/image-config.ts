import { invalid, type Container } from '@moat/core';
import type { RunConfig } from '@moat/runtime';

/**
 * The main process as Kubernetes derives it from the image: `command`
 * replaces ENTRYPOINT (and drops CMD), `args` replaces CMD; WORKDIR and USER
 * apply unless the container says otherwise.
 */
export function imageProcess(config: RunConfig, c: Pick<Container, 'command' | 'args' | 'workingDir'>) {
  const entrypoint = c.command ?? config.Entrypoint ?? [];
  const args = c.args ?? (c.command ? [] : (config.Cmd ?? []));
  return {
    command: [...entrypoint, ...args],
    workingDir: c.workingDir ?? (config.WorkingDir || '/'),
    ...(config.User ? { user: checkUser(config.User) } : {}),
  };
}

// USER comes from an image's config, which anyone may have written.
function checkUser(user: string): string {
  if (!/^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$/.test(user))
    throw invalid(`the image's USER ${JSON.stringify(user)} is not a user name or uid (with an optional :group)`);
  return user;
}

/** The image's ENV, beneath the container's own. */
export function imageEnv(config: RunConfig): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of config.Env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

/**
 * The image's EXPOSEd TCP ports (`"8888/tcp"`, or a bare `"8888"`), as Docker
 * reads them. Any port is reachable through the ports route; these are the
 * ones the image says it serves, listed in the sandbox's status.
 */
export function exposedPorts(config: RunConfig): number[] {
  const ports = new Set<number>();
  for (const key of Object.keys(config.ExposedPorts ?? {})) {
    const m = /^(\d{1,5})(?:\/tcp)?$/i.exec(key);
    const port = m ? Number(m[1]) : 0;
    if (port >= 1 && port <= 65535) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}
