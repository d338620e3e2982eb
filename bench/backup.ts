// Backup and restore throughput of a named volume holding ~200 MB (half random, half text), through the API
// (freeze, zstd, SHA-256, local object store); raw `zstd` and `cat` of the same image in the same run as baselines.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { NS, sandboxBody, sh, startTestServer, type TestServer } from '../test/helpers/server.js';
import { summary, time } from './stats.js';

const N = Number(process.env.BENCH_BACKUP_N ?? 3);
const API = '/apis/moat.dev/v1/namespaces/default';
const MB = 1e6;

async function json<T>(server: TestServer, path: string, init: RequestInit & { json?: unknown }, status: number): Promise<T> {
  const res = await server.api(path, init);
  const text = await res.text();
  if (res.status !== status) throw new Error(`${init.method ?? 'GET'} ${path}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

const rate = (bytes: number, samples: number[]) => {
  const p50 = summary(samples).p50;
  return `${(bytes / MB / (p50 / 1000)).toFixed(0).padStart(5)} MB/s  (p50 ${p50.toFixed(0)} ms, n=${samples.length})`;
};

export async function benchBackup() {
  console.log('\n== backup / restore (named volume, local store) ==');
  const server = await startTestServer();
  try {
    const body = sandboxBody('bench-src') as ReturnType<typeof sandboxBody> & { spec: Record<string, unknown> };
    body.spec.volumeClaimTemplates = [{ metadata: { name: 'data' }, spec: { resources: { requests: { storage: '1Gi' } } } }];
    await json(server, NS, { method: 'POST', json: body }, 201);
    await json(server, `${NS}/bench-src/wait?timeoutSeconds=120`, {}, 200);
    const fill = await sh(
      server,
      'bench-src',
      'head -c 100000000 /dev/urandom > /data/random && seq 1 15000000 | head -c 100000000 > /data/text && sync && du -sb /data | cut -f1',
    );
    if (fill.exit?.exitCode !== 0) throw new Error(`fill: ${fill.stderr}`);
    const used = Number(fill.stdout.trim());
    const volume = await json<{ uid: string; sizeBytes: number }>(server, `${API}/volumes/data-bench-src`, {}, 200);
    const image = join(server.dataDir, 'volumes', `${volume.uid}.img`);

    const backups: number[] = [];
    const restores: number[] = [];
    let compressed = 0;
    for (let i = 0; i < N; i++) {
      let id = '';
      backups.push(
        await time(async () => {
          const b = await json<{ id: string; compressedBytes: number }>(server, `${API}/backups`, { method: 'POST', json: { sandbox: 'bench-src' } }, 201);
          id = b.id;
          compressed = b.compressedBytes;
        }),
      );
      restores.push(await time(() => json(server, `${API}/backups/${id}/restore`, { method: 'POST', json: { volume: `restored-${i}` } }, 201)));
      await server.api(`${API}/volumes/restored-${i}`, { method: 'DELETE' });
      await server.api(`${API}/backups/${id}`, { method: 'DELETE' });
    }
    const raw = (cmd: string) => {
      const out: number[] = [];
      for (let i = 0; i < N; i++) {
        const t0 = performance.now();
        spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });
        out.push(performance.now() - t0);
      }
      return out;
    };
    const rawZstd = raw(`zstd -q -c -3 -T0 '${image}' > /dev/null`);
    const rawCat = raw(`cat '${image}' > /dev/null`);

    console.log(
      `  data ${(used / MB).toFixed(0)} MB in a ${(volume.sizeBytes / 2 ** 30).toFixed(0)} GiB volume; compressed backup ${(compressed / MB).toFixed(1)} MB (${((100 * compressed) / used).toFixed(0)}% of the data)`,
    );
    console.log(
      `  backup (API: freeze, zstd, sha256, store)      ${rate(used, backups)} of data, ${rate(volume.sizeBytes, backups).trim().split(' ')[0]} MB/s of image`,
    );
    console.log(`  restore (API: sha256, unzstd --sparse, volume)  ${rate(used, restores)} of data`);
    console.log('  baseline (same run, same image):');
    console.log(`  raw zstd -3 -T0 of the image to /dev/null        ${rate(used, rawZstd)} of data`);
    console.log(`  raw cat of the image to /dev/null                ${rate(used, rawCat)} of data`);
  } finally {
    await server.close();
  }
}
