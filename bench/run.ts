// `npm run bench`: prints figures; baselines are measured in the same run because these machines are noisy.
import { benchCore } from './core.js';
import { benchPools } from './pools.js';

const only = process.argv[2];
const suites: Record<string, () => Promise<void>> = {
  core: benchCore,
  pools: benchPools,
  net: async () => (await import('./net.js')).benchNet(),
  e2b: async () => (await import('./e2b.js')).benchE2b(),
  runtimes: async () => (await import('./runtimes.js')).benchRuntimes(),
  hibernate: async () => (await import('./hibernate.js')).benchHibernate(),
  backup: async () => (await import('./backup.js')).benchBackup(),
  images: async () => (await import('./images.js')).benchImages(),
  density: async () => (await import('./density.js')).benchDensity(),
  // Only when asked for: it needs the dev cluster (scripts/dev-cluster up).
  ...(only === 'cluster' ? { cluster: async () => (await import('./cluster.js')).benchCluster() } : {}),
};
for (const [name, fn] of Object.entries(suites)) {
  if (!only || only === name) await fn();
}
