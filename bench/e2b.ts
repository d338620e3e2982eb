// The stock `e2b` SDK (as installed for test/e2b): Sandbox.create() → first commands.run result, cold and from a warm pool.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { EXT, apiJson, poolBody, poolReady } from '../test/helpers/extensions.js';
import { startTestServer } from '../test/helpers/server.js';
import { row, time } from './stats.js';

type E2b = typeof import('../test/e2b/node_modules/e2b/dist/index.js');
const N = Number(process.env.BENCH_E2B_N ?? 20);

async function loadSdk(): Promise<E2b> {
  const sdk = createRequire(new URL('../test/e2b/package.json', import.meta.url)).resolve('e2b');
  return (await import(pathToFileURL(sdk).href)) as E2b;
}

export async function benchE2b() {
  console.log('\n== e2b SDK (Sandbox.create → first commands.run result) ==');
  const { Sandbox } = await loadSdk();
  const server = await startTestServer();
  const opts = { apiKey: server.adminKey, apiUrl: server.url, sandboxUrl: server.url };
  const createThenRun = async () => {
    const samples: number[] = [];
    for (let i = 0; i < N; i++) {
      let sbx: InstanceType<typeof Sandbox> | undefined;
      samples.push(
        await time(async () => {
          sbx = await Sandbox.create('base', opts);
          const r = await sbx.commands.run('true');
          if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
        }),
      );
      await sbx!.kill();
    }
    return samples;
  };
  try {
    row('cold (no pool)', await createThenRun());
    await apiJson(server, `${EXT}/sandboxwarmpools`, { method: 'POST', json: poolBody('e2b-base', 'base', N) }, 201);
    await poolReady(server, 'e2b-base', N, 600_000);
    row(`warm pool of ${N}`, await createThenRun());
    await server.api(`${EXT}/sandboxwarmpools/e2b-base?wait=true`, { method: 'DELETE' });
  } finally {
    await server.close();
  }
}
