import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runProcess } from './run-process.js';

const devCluster = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'dev-cluster');

/** Runs scripts/dev-cluster with its progress (cold builds take a while) shown in the test's output. */
function devClusterLoud(command: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(devCluster, [command], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('close', (code) => resolve(code ?? -1));
  });
}

/** `env`'s output: `[export ]NAME=value` lines (paths and image names, which printf %q leaves unquoted). */
function parseEnv(text: string): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^(?:export )?([A-Z_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]!] = m[2]!;
  }
  return vars;
}

export interface DevCluster {
  /** The host's environment with the cluster's KUBECONFIG. */
  env: Record<string, string>;
  kubeconfig: string;
  /** The GKE tutorial's python-runtime image, imported into the node. */
  pythonImage: string;
  kubectl(...args: string[]): Promise<string>;
  /** `kubectl port-forward TARGET :PORT` (kubectl's args after it, e.g. `-n NS`) to a local port it picks, once it forwards. */
  portForward(target: string, port: number, ...args: string[]): Promise<{ url: string; child: ChildProcessWithoutNullStreams }>;
}

/** The dev cluster (started when it is not running), and kubectl against it. */
export async function devClusterUp(): Promise<DevCluster> {
  const hostEnv = process.env as Record<string, string>;
  if ((await runProcess(devCluster, ['status'], { env: hostEnv })).code !== 0) {
    assert.equal(await devClusterLoud('up'), 0, 'scripts/dev-cluster up failed');
  }
  const printed = await runProcess(devCluster, ['env'], { env: hostEnv });
  assert.equal(printed.code, 0, printed.stderr);
  const vars = parseEnv(printed.stdout);
  assert.ok(vars.KUBECONFIG && vars.PYTHON_RUNTIME_IMAGE, printed.stdout);
  const env = { ...hostEnv, KUBECONFIG: vars.KUBECONFIG };
  return {
    env,
    kubeconfig: vars.KUBECONFIG,
    pythonImage: vars.PYTHON_RUNTIME_IMAGE,
    async kubectl(...args: string[]) {
      const r = await runProcess('kubectl', args, { env });
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: exit ${r.code}\n${r.stderr}${r.stdout}`);
      return r.stdout;
    },
    portForward: (target, port, ...args) =>
      new Promise((resolve, reject) => {
        const child = spawn('kubectl', ['port-forward', target, `:${port}`, ...args], { env });
        let out = '';
        child.stdout.on('data', (d) => {
          out += d;
          const m = /Forwarding from 127\.0\.0\.1:(\d+) ->/.exec(out);
          if (m) resolve({ url: `http://127.0.0.1:${m[1]}`, child });
        });
        child.stderr.on('data', (d) => (out += d));
        child.on('close', (code) => reject(new Error(`kubectl port-forward ${target} exited ${code}: ${out}`)));
      }),
  };
}

/** The images of Moat's own install (scripts/dev-cluster images: Moat's follows its last build), imported into the node. */
export async function devClusterImages(): Promise<{ moat: string; postgres: string }> {
  const hostEnv = process.env as Record<string, string>;
  const built = await runProcess(devCluster, ['images'], { env: hostEnv });
  assert.equal(built.code, 0, built.stderr);
  const printed = await runProcess(devCluster, ['env'], { env: hostEnv });
  const vars = parseEnv(printed.stdout);
  assert.ok(vars.MOAT_IMAGE && vars.POSTGRES_IMAGE, `${built.stderr}${printed.stdout}`);
  return { moat: vars.MOAT_IMAGE, postgres: vars.POSTGRES_IMAGE };
}
