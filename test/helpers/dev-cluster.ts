import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
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
  };
}
