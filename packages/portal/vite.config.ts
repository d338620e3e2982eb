import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, gzipSync, constants } from 'node:zlib';
import react from '@vitejs/plugin-react';
import { defaultClientConditions, defineConfig, type Plugin } from 'vite';

/** Writes .br and .gz beside each text asset, which the server sends to browsers that accept them (no compression per request). */
function precompress(): Plugin {
  let outDir = 'dist';
  return {
    name: 'moat-precompress',
    apply: 'build',
    configResolved(c) {
      outDir = c.build.outDir;
    },
    closeBundle() {
      const dir = join(outDir, 'assets');
      for (const f of readdirSync(dir)) {
        if (!/\.(js|css|svg|json)$/.test(f)) continue;
        const data = readFileSync(join(dir, f));
        writeFileSync(join(dir, `${f}.gz`), gzipSync(data, { level: 9 }));
        writeFileSync(join(dir, `${f}.br`), brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
      }
    },
  };
}

export default defineConfig({
  plugins: [react(), precompress()],
  base: '/',
  // Workspace packages (the SDK's wire constants) are bundled from their TypeScript source.
  resolve: { conditions: ['source', ...defaultClientConditions] },
  build: { target: 'es2022', sourcemap: false, chunkSizeWarningLimit: 400, reportCompressedSize: true },
  server: { proxy: { '/apis': { target: process.env.MOAT_URL ?? 'http://127.0.0.1:6628', ws: true } } },
});
