// Warm pools: claim → first exec result, served from a pool vs started cold; raw runc in the same run as the baseline.
import { EXT, apiJson, claimBody, poolBody, poolReady, templateBody } from '../test/helpers/extensions.js';
import { NS, execApi, startTestServer, type TestServer } from '../test/helpers/server.js';
import { rawRunc } from './core.js';
import { row, time } from './stats.js';

const POOL_SIZES = (process.env.BENCH_POOL_SIZES ?? '10,50').split(',').map(Number);
const N_COLD = Number(process.env.BENCH_COLD ?? 20);

/** One claim and its first exec; says whether the pool served it. */
async function claimThenExec(server: TestServer, name: string, extra: Record<string, unknown> = {}): Promise<{ ms: number; warm: boolean }> {
  let warm = false;
  const ms = await time(async () => {
    const claim = await apiJson<{ status: { warmPool?: string; conditions: { type: string; status: string }[] } }>(
      server,
      `${EXT}/sandboxclaims`,
      { method: 'POST', json: claimBody(name, 'bench', extra) },
      201,
    );
    warm = Boolean(claim.status.warmPool);
    if (!claim.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True')) await apiJson(server, `${NS}/${name}/wait?timeoutSeconds=60`, {}, 200);
    const r = await execApi(server, name, { command: ['true'] });
    if (r.exit?.exitCode !== 0) throw new Error(`exec in ${name} failed: ${JSON.stringify(r)}`);
  });
  return { ms, warm };
}

async function deleteClaims(server: TestServer, names: string[]) {
  for (const n of names) await server.api(`${EXT}/sandboxclaims/${n}?wait=true`, { method: 'DELETE' });
}

export async function benchPools() {
  console.log('\n== warm pools (claim → first exec result) ==');
  const raw = await rawRunc();
  const server = await startTestServer();
  try {
    await apiJson(server, `${EXT}/sandboxtemplates`, { method: 'POST', json: templateBody('bench') }, 201);
    console.log('  baseline (same run, same image):');
    row('raw `runc run` of true', raw.run);
    row('raw `runc exec` of true', raw.exec);

    const cold: number[] = [];
    const coldNames = Array.from({ length: N_COLD }, (_, i) => `cold-${i}`);
    for (const n of coldNames) cold.push((await claimThenExec(server, n, { warmpool: 'none' })).ms);
    await deleteClaims(server, coldNames);
    console.log('  moat:');
    row('cold claim → first exec', cold, raw.run);

    for (const size of POOL_SIZES) {
      await apiJson(server, `${EXT}/sandboxwarmpools`, { method: 'POST', json: poolBody(`pool-${size}`, 'bench', size) }, 201);
      await poolReady(server, `pool-${size}`, size, 600_000);
      const warm: number[] = [];
      const names = Array.from({ length: size }, (_, i) => `warm-${size}-${i}`);
      let fromPool = 0;
      for (const n of names) {
        const r = await claimThenExec(server, n, { warmpool: `pool-${size}` });
        if (r.warm) {
          warm.push(r.ms);
          fromPool++;
        }
      }
      const s = row(`warm claim → first exec (pool of ${size})`, warm, raw.run);
      console.log(`    ${fromPool}/${size} claims served from the pool; target p50 ≤ 20 ms and p99 ≤ 60 ms: ${s.p50 <= 20 && s.p99 <= 60 ? 'met' : 'MISSED'}`);
      await deleteClaims(server, names);
      await server.api(`${EXT}/sandboxwarmpools/pool-${size}?wait=true`, { method: 'DELETE' });
    }
  } finally {
    await server.close();
  }
}
