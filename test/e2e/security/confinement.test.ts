import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { run } from '@moat/runtime';
import { createReady, sh, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';

/**
 * What a sandbox's root may not do, as one table: every runtime runs every
 * row. A microVM and gVisor have a kernel of their own below the workload,
 * but that is a second wall: the workload itself is confined as in runc.
 * Each row's script prints what the sandbox sees; `fails` tells whether the
 * restricted operation failed.
 */
interface Row {
  what: string;
  script: string;
  fails: (out: string) => boolean;
  /**
   * Where a runtime's guest shows its own kernel's view instead of the host's (gVisor's sentry keeps an identity
   * map of its own), what the host sees of the sandbox, given to `fails` in place of the script's output.
   */
  host?: Record<string, (server: TestServer, uid: string) => Promise<string>>;
}

/** The uid_map of a gVisor sandbox's sentry, as the host kernel applies it to every process of the sandbox. */
async function sentryUidMap(server: TestServer, uid: string): Promise<string> {
  const state = await run('runsc', ['--root', join(server.dataDir, 'runtime', 'gvisor'), 'state', uid]);
  return readFile(`/proc/${(JSON.parse(state.stdout) as { pid: number }).pid}/uid_map`, 'utf8');
}

/** Runs Python in the sandbox: `syscall(nr, ...)` prints "ok", or "errno N". */
const syscall = (nr: number, args: string) =>
  `python3 -c "import ctypes; l = ctypes.CDLL(None, use_errno=True); r = l.syscall(${nr}, ${args}); print('ok' if r >= 0 else 'errno %d' % ctypes.get_errno())"`;
/** What prctl(option) returns: PR_GET_NO_NEW_PRIVS (39), PR_GET_SECCOMP (21). */
const prctl = (option: number) => `python3 -c "import ctypes; print(ctypes.CDLL(None).prctl(${option}, 0, 0, 0, 0))"`;
/** Python that prints "ok" when the statement runs, or the exception's errno. */
const python = (stmt: string) => `python3 -c "
try:
    ${stmt}; print('ok')
except OSError as e: print('errno', e.errno)"`;

const capability = (bit: number) => (out: string) => {
  const [eff, bnd] = ['CapEff', 'CapBnd'].map((f) => BigInt('0x' + new RegExp(`${f}:\\s+([0-9a-f]+)`).exec(out)![1]));
  return (eff! & (1n << BigInt(bit))) === 0n && (bnd! & (1n << BigInt(bit))) === 0n;
};
const denied = (out: string) => /^(errno \d+|denied)$/.test(out.trim());

const RESTRICTED: Row[] = [
  { what: 'mount a filesystem', script: 'mount -t tmpfs none /mnt 2>/dev/null && echo ok || echo denied', fails: denied },
  { what: 'unshare -U (a new user namespace)', script: 'unshare -U true 2>/dev/null && echo ok || echo denied', fails: denied },
  { what: 'unshare -n (a new network namespace)', script: 'unshare -n true 2>/dev/null && echo ok || echo denied', fails: denied },
  // init_module(NULL, 0, ""): EPERM from the seccomp filter (or the missing capability) before the kernel looks at the module.
  { what: 'init_module', script: syscall(175, "0, 0, b''"), fails: (out) => /^errno (1|38)$/.test(out.trim()) },
  { what: 'keyctl (the kernel keyrings)', script: syscall(250, '0, -3, 0'), fails: denied },
  { what: 'a raw IP socket', script: python('import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'), fails: denied },
  { what: 'an AF_PACKET socket', script: python('import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'), fails: denied },
  { what: 'CAP_SYS_ADMIN in CapEff or CapBnd', script: 'grep -E "^Cap(Eff|Bnd)" /proc/self/status', fails: capability(21) },
  { what: 'CAP_NET_RAW in CapEff or CapBnd', script: 'grep -E "^Cap(Eff|Bnd)" /proc/self/status', fails: capability(13) },
  // prctl rather than /proc/self/status: gVisor's status has no NoNewPrivs line.
  { what: 'gaining privileges (no_new_privs is 1)', script: prctl(39), fails: (out) => out === '1\n' },
  { what: 'a syscall outside the seccomp filter (seccomp mode 2, a filter)', script: prctl(21), fails: (out) => out === '2\n' },
  {
    what: 'root that is root outside (uid 0 maps to an unprivileged uid)',
    script: 'cat /proc/self/uid_map',
    fails: (out) => {
      const [inside, outside] = out.trim().split(/\s+/).map(Number);
      return inside === 0 && outside! > 0;
    },
    host: { gvisor: sentryUidMap },
  },
  { what: 'writing /proc/sysrq-trigger', script: '(echo h > /proc/sysrq-trigger) 2>/dev/null && echo ok || echo denied', fails: denied },
  {
    what: 'opening a raw block device (none in /dev, and none can be made)',
    script:
      'echo "$(find /dev -type b | wc -l) in /dev"; mknod /tmp/blk b 254 0 2>/dev/null && (head -c1 /tmp/blk >/dev/null 2>&1 && echo ok || echo denied) || echo denied',
    fails: (out) => out === '0 in /dev\ndenied\n',
  },
  {
    what: 'writing kernel settings (/proc/sys) or cgroup files (/sys/fs/cgroup)',
    script:
      '(echo 1 > /proc/sys/kernel/sysrq) 2>/dev/null && echo ok || echo denied; f=$(ls /sys/fs/cgroup/*.max /sys/fs/cgroup/pids/pids.max 2>/dev/null | head -1); (v=$(cat "$f"); echo "$v" > "${f:-/sys/fs/cgroup/x}") 2>/dev/null && echo ok || echo denied',
    fails: (out) => out === 'denied\ndenied\n',
  },
];

for (const { runtime, skip } of testRuntimes())
  describe(`confinement (${runtime})`, { skip }, () => {
    let server: TestServer;
    let uid: string;
    before(async () => {
      server = await startTestServer();
      uid = (await createReady(server, 'conf', { runtime, limits: { memory: '256Mi' } })).metadata.uid;
    });
    after(() => server.close());

    for (const row of RESTRICTED)
      test(`fails: ${row.what}`, async () => {
        const r = await sh(server, 'conf', row.script);
        const seen = row.host?.[runtime] ? await row.host[runtime](server, uid) : r.stdout;
        assert.ok(row.fails(seen), `${row.what} is possible in ${runtime}: ${JSON.stringify(seen)} ${r.stderr}`);
      });

    test('control: root in the same sandbox writes its own layer and volume', async () => {
      const r = await sh(server, 'conf', 'echo hi > /etc/probe && cat /etc/probe && echo v > /data/probe && cat /data/probe && id -u');
      assert.equal(r.stdout, 'hi\nv\n0\n');
    });
  });
