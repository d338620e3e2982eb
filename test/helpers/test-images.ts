import { readFile } from 'node:fs/promises';
import { makeImageLayout, type LayerSpec } from './registry.js';

export { pushLayout } from './registry.js';

const APPLETS = ['sh', 'cat', 'id', 'seq', 'sleep', 'pwd', 'echo', 'ls', 'test', '[', 'env', 'printf', 'mkdir', 'rm', 'grep', 'head', 'wc', 'true', 'false'];

/**
 * A two-layer image around the host's static busybox: enough of a userland
 * to check CMD, ENV, WORKDIR, USER and whiteouts. `v2` differs only in
 * /app/hello.txt, so the two share their first layer.
 */
export async function busyboxImage(dir: string, variant: 'v1' | 'v2'): Promise<string> {
  const base: LayerSpec = {
    'bin/': { type: 'dir' },
    'bin/busybox': { content: await readFile('/bin/busybox'), mode: 0o755 },
    ...Object.fromEntries(APPLETS.map((a) => [`bin/${a}`, { type: 'symlink', linkname: 'busybox' }])),
    'etc/': { type: 'dir' },
    'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n',
    'etc/group': 'root:x:0:\nuser:x:1000:\n',
    'tmp/': { type: 'dir', mode: 0o1777 },
    'home/': { type: 'dir' },
    'home/user/': { type: 'dir', uid: 1000, gid: 1000 },
    'app/': { type: 'dir' },
    'app/removed.txt': 'removed by layer 2\n',
  };
  const top: LayerSpec = {
    'app/': { type: 'dir' },
    'app/hello.txt': variant === 'v1' ? 'hello from layer 2\n' : 'hello from v2\n',
    'app/.wh.removed.txt': '',
  };
  return makeImageLayout(dir, {
    layers: [base, top],
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'GREETING=hi'],
      WorkingDir: '/app',
      User: '1000',
      Cmd: ['/bin/sh', '-c', 'echo main ran as $(id -u) in $(pwd) > /tmp/main.txt; exec sleep 1000000'],
    },
  });
}
