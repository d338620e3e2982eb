import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GvisorDriver, MIN_RUNSC_RELEASE, defaultSeccompProfile, run, seccompForGvisor } from '@moat/runtime';
import { NS, createReady, execApi, sh, sharedImagesDir, startTestServer, type TestServer } from '../../helpers/server.js';

/** A sandbox body with `runtimeClassName: gvisor` (sandboxBody has no runtime option). */
function gvisorBody(name: string, extra: { limits?: Record<string, string>; env?: Record<string, string> } = {}) {
  return {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name },
    spec: {
      podTemplate: {
        spec: {
          runtimeClassName: 'gvisor',
          containers: [
            {
              name: 'sandbox',
              image: 'base',
              ...(extra.env ? { env: Object.entries(extra.env).map(([n, value]) => ({ name: n, value })) } : {}),
              ...(extra.limits ? { resources: { limits: extra.limits } } : {}),
            },
          ],
        },
      },
    },
  };
}

async function createGvisor(server: TestServer, name: string, extra: Parameters<typeof gvisorBody>[1] = {}) {
  const res = await server.api(NS, { method: 'POST', json: gvisorBody(name, extra) });
  if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${await res.text()}`);
  const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=120`);
  if (wait.status !== 200) throw new Error(`wait ${name}: ${wait.status} ${await wait.text()}`);
  return (await wait.json()) as { metadata: { uid: string; name: string }; status: { runtimeClassName?: string } & Record<string, unknown> };
}

const runsc = (server: TestServer, ...args: string[]) => run('runsc', ['--root', join(server.dataDir, 'runtime', 'gvisor'), ...args], { allowFail: true });

/** The capability sets of a process, as /proc/self/status shows them. */
const CAPS = 'grep -E "^Cap(Inh|Prm|Eff|Bnd):" /proc/self/status';

/**
 * Raw system calls from Python, each printed as `name errno-name` (`ok` when it succeeded; a child a clone made
 * leaves at once). unshare(0) changes nothing and needs no privilege: only a seccomp rule makes it fail.
 */
const SYSCALLS = `python3 - <<'EOF'
import ctypes, errno, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
def call(name, nr, *args):
    r = libc.syscall(nr, *args)
    if r == 0 and name.startswith("clone"):
        os._exit(0)
    if r > 0 and name.startswith("clone"):
        os.waitpid(r, 0)
    print(name, "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
clone_args = ctypes.create_string_buffer(struct.pack("8Q", CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0))
call("unshare0", 272, 0)
call("keyctl", 250, 0, 0, 0, 0, 0)
call("bpf", 321, 0, 0, 0)
call("clone_newuser", 56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
call("clone3_newuser", 435, clone_args, 64)
call("getpid", 39)
# pid 0 is nobody: ESRCH, unless a seccomp rule refuses the request first.
call("ptrace_traceseccomp", 101, 0x4200, 0, 0, 0x80)
call("ptrace_tracesysgood", 101, 0x4200, 0, 0, 0x1)
EOF`;

/** gVisor's own mechanisms; exec, files, limits and isolation common to all runtimes are in sandbox-lifecycle and isolation. */
describe('gvisor runtime class', () => {
  let server: TestServer;
  let uid: string;
  before(async () => {
    server = await startTestServer();
    ({
      metadata: { uid },
    } = await createGvisor(server, 'gv', { limits: { memory: '256Mi' }, env: { GREETING: 'hi' } }));
  });
  after(() => server.close());

  test('is available in /info and the sandbox runs under runsc, in its own dirs', async () => {
    const info = (await (await server.api('/apis/moat.dev/v1/info')).json()) as { runtimes: Record<string, { available: boolean }> };
    assert.equal(info.runtimes.gvisor?.available, true, JSON.stringify(info.runtimes));
    const s = (await (await server.api(`${NS}/gv`)).json()) as { status: { runtimeClassName: string } };
    assert.equal(s.status.runtimeClassName, 'gvisor');
    const st = await runsc(server, 'state', uid);
    assert.equal(st.code, 0, st.stderr);
    assert.equal((JSON.parse(st.stdout) as { status: string }).status, 'running');
    assert.ok(existsSync(join(server.dataDir, 'sandboxes-gvisor', uid)));
    assert.ok(!existsSync(join(server.dataDir, 'sandboxes', uid)), "not in runc's sandboxes dir");
  });

  test('the platform check() chose is the one the sandbox runs on; /info names it and warns when it is the ptrace fallback', async () => {
    const driver = new GvisorDriver({ root: server.dataDir, cacheDir: sharedImagesDir() });
    await driver.check();
    assert.ok(['systrap', 'ptrace'].includes(driver.platform), driver.platform);
    // The sentry (runsc-sandbox) of the running sandbox was started with it.
    const ps = await run('ps', ['-eo', 'args'], { allowFail: true });
    const sentry = ps.stdout.split('\n').find((l) => l.includes('runsc-sandbox') && l.includes(uid));
    assert.ok(sentry, `no sentry process for ${uid}`);
    assert.match(sentry, new RegExp(`--platform=${driver.platform}\\b`));
    const info = (await (await server.api('/apis/moat.dev/v1/info')).json()) as {
      runtimes: Record<string, { available: boolean; warning?: string; detail?: string }>;
    };
    assert.equal(info.runtimes.gvisor?.detail, driver.describe(), '/info names the platform');
    if (driver.platform === 'systrap') {
      assert.equal(await driver.degraded(), undefined);
      assert.equal(info.runtimes.gvisor?.warning, undefined, 'no warning on systrap');
    } else {
      assert.match((await driver.degraded()) ?? '', /ptrace \(systrap failed here: /);
      assert.equal(info.runtimes.gvisor?.warning, await driver.degraded());
    }
  });

  test('seccomp: the profile runc applies filters the guest inside the sentry', async () => {
    const r = await sh(server, 'gv', `grep -E "^Seccomp:" /proc/self/status; ${SYSCALLS}`);
    assert.equal(r.exit?.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^Seccomp:\s+2$/m, 'in filter mode');
    // Denied by the profile with the errno it names: EPERM, and ENOSYS for clone3 (which glibc falls back from).
    assert.match(r.stdout, /^unshare0 EPERM$/m);
    assert.match(r.stdout, /^keyctl EPERM$/m);
    assert.match(r.stdout, /^bpf EPERM$/m);
    assert.match(r.stdout, /^clone3_newuser ENOSYS$/m);
    assert.match(r.stdout, /^getpid ok$/m);
    // No tracer may ask for seccomp stops (which could let clone3 through); other ptrace options are not filtered.
    assert.match(r.stdout, /^ptrace_traceseccomp EPERM$/m);
    assert.match(r.stdout, /^ptrace_tracesysgood ESRCH$/m);
    // So threads and subprocesses, which glibc starts with clone3 first, still work.
    const t = await sh(
      server,
      'gv',
      `python3 -c 'import subprocess, threading; t = threading.Thread(target=print, args=("thread",)); t.start(); t.join(); print(subprocess.run(["true"]).returncode)'`,
    );
    assert.equal(t.stdout, 'thread\n0\n', t.stderr);
  });

  test("capabilities are runc's; user namespaces, mount and raw sockets are refused", async () => {
    await createReady(server, 'rc', { runtime: 'runc' });
    const [g, rc] = await Promise.all([sh(server, 'gv', CAPS), sh(server, 'rc', CAPS)]);
    assert.match(g.stdout, /^CapEff:\s+[0-9a-f]{16}$/m);
    assert.equal(g.stdout, rc.stdout, 'the same capability sets as a runc sandbox');
    const r = await sh(
      server,
      'gv',
      [
        'unshare -U true 2>/dev/null && echo userns-ok || echo userns-denied',
        'unshare -Ur true 2>/dev/null && echo userns-root-ok || echo userns-root-denied',
        'mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-denied',
        `python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 2>/dev/null && echo raw-ok || echo raw-denied`,
        `python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)' 2>/dev/null && echo packet-ok || echo packet-denied`,
        SYSCALLS,
      ].join('\n'),
    );
    for (const denied of ['userns', 'userns-root', 'mount', 'raw', 'packet']) assert.match(r.stdout, new RegExp(`^${denied}-denied$`, 'm'));
    assert.match(r.stdout, /^clone_newuser EPERM$/m, 'clone cannot make a user namespace');
    assert.match(r.stdout, /^clone3_newuser ENOSYS$/m, 'nor clone3');
    await server.api(`${NS}/rc?wait=true`, { method: 'DELETE' });
  });

  test("the kernel is gVisor's, not the host's", async () => {
    const r = await sh(server, 'gv', 'cat /proc/version; uname -r');
    assert.ok(!r.stdout.includes(release()), `the host kernel release ${release()} is not visible: ${r.stdout}`);
    // gVisor's fixed identity string (runsc 20221219 and 20240729 alike), not a build of Linux.
    assert.match(r.stdout, /^Linux version 4\.4\.0 #1 SMP Sun Jan 10 15:06:54 PST 2016\n4\.4\.0\n$/);
  });

  test('root inside owns files as an unprivileged host uid; no CAP_SYS_ADMIN; mount fails', async () => {
    const r = await sh(
      server,
      'gv',
      [
        'echo x > /data/owned; echo y > /owned-root',
        'mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-denied',
        'grep -E "CapEff" /proc/self/status',
      ].join('; '),
    );
    assert.match(r.stdout, /mount-denied/);
    const capEff = BigInt('0x' + /CapEff:\s+([0-9a-f]+)/.exec(r.stdout)![1]);
    assert.equal(capEff & (1n << 21n), 0n, 'no CAP_SYS_ADMIN');
    const dir = join(server.dataDir, 'sandboxes-gvisor', uid);
    assert.equal((await stat(join(dir, 'data', 'owned'))).uid, 1 << 24);
    assert.equal((await stat(join(dir, 'disk', 'upper', 'owned-root'))).uid, 1 << 24);
    // The socket directory belongs to the sandbox's own root on the host (its id range), and so does the socket.
    const sandboxRoot = (await stat(join(dir, 'sock'))).uid;
    assert.ok(sandboxRoot >= 1 << 24, `an unprivileged host uid (${sandboxRoot})`);
    assert.equal((await stat(join(dir, 'sock', 'agent.sock'))).uid, sandboxRoot, 'the agent socket was made on the host by the gofer');
  });

  test('the hostname is the sandbox name and can be changed while it runs', async () => {
    assert.equal((await sh(server, 'gv', 'hostname; cat /etc/hostname')).stdout, 'gv\ngv\n');
    const driver = new GvisorDriver({ root: server.dataDir, cacheDir: sharedImagesDir() });
    await driver.setHostname(uid, 'renamed');
    assert.equal((await sh(server, 'gv', 'hostname; cat /etc/hostname; grep renamed /etc/hosts')).stdout, 'renamed\nrenamed\n127.0.1.1\trenamed\n');
    await driver.setHostname(uid, 'gv');
  });

  test('egress goes through the proxy: with no policy, a request gets 403 from it', async () => {
    const r = await sh(server, 'gv', `echo "$HTTP_PROXY"; curl -s --max-time 10 -w '\\n%{http_code}' http://nopolicy.test/`);
    assert.match(r.stdout, /^http:\/\//);
    assert.match(r.stdout, /deny-all/);
    assert.match(r.stdout, /\n403$/);
    const links = await sh(server, 'gv', `ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | sort`);
    assert.equal(links.stdout, 'eth0\nlo\n');
  });

  test('a memory hog is stopped at the memory limit (the host cgroup holds it; the sandbox may not survive)', async (t) => {
    const limit = (await readFile(`/sys/fs/cgroup/memory/moat/${uid}/memory.limit_in_bytes`, 'utf8').catch(() => '')).trim();
    assert.equal(limit, String(256 * 2 ** 20), 'the host cgroup holds the limit');
    const r = await execApi(server, 'gv', { command: ['python3', '-c', 'b = bytearray(600 * 1024 * 1024); print(len(b))'] });
    assert.doesNotMatch(r.stdout, /629145600/, 'the allocation did not succeed');
    const after = await sh(server, 'gv', 'echo alive');
    t.diagnostic(
      `hog: ${JSON.stringify(r.exit)}; afterwards: ${after.stdout ? 'sandbox alive' : `sandbox gone (${JSON.stringify(after.exit ?? after.error)})`}; runsc state: ${(await runsc(server, 'state', uid)).stdout.match(/"status": "(\w+)"/)?.[1] ?? 'missing'}`,
    );
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
  });

  test('a fork bomb is stopped by the pids limit and the host stays responsive', async (t) => {
    const { metadata } = await createGvisor(server, 'gvbomb', { limits: { 'moat.dev/pids': '64' } });
    assert.equal((await readFile(`/sys/fs/cgroup/pids/moat/${metadata.uid}/pids.max`, 'utf8')).trim(), '64');
    const bomb = sh(server, 'gvbomb', 'bomb() { bomb | bomb & }; bomb; sleep 2', { timeoutSeconds: 5 });
    const t0 = Date.now();
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
    assert.ok(Date.now() - t0 < 2000, 'the API answers during the bomb');
    await bomb;
    const after = await sh(server, 'gvbomb', 'echo alive');
    const events = await readFile(`/sys/fs/cgroup/pids/moat/${metadata.uid}/pids.events`, 'utf8').catch(() => 'gone');
    t.diagnostic(`afterwards: ${after.stdout ? 'sandbox alive' : 'sandbox gone'}; host pids.events: ${events.trim()}`);
    const del = await server.api(`${NS}/gvbomb?wait=true`, { method: 'DELETE' });
    assert.equal(del.status, 200);
  });

  test('delete removes the runsc container, the mounts, the cgroup and the dirs', async () => {
    const { metadata } = await createGvisor(server, 'gvdel');
    const dir = join(server.dataDir, 'sandboxes-gvisor', metadata.uid);
    assert.ok(existsSync(dir));
    const del = await server.api(`${NS}/gvdel?wait=true`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    assert.ok(!existsSync(dir), 'sandbox dir removed');
    assert.equal((await runsc(server, 'state', metadata.uid)).code !== 0, true, 'runsc no longer knows it');
    assert.ok(!(await readdir(join(server.dataDir, 'runtime', 'gvisor'))).some((f) => f.includes(metadata.uid)), 'no runsc state left');
    assert.doesNotMatch(await readFile('/proc/self/mountinfo', 'utf8'), new RegExp(metadata.uid), 'no mounts left');
    assert.ok(!existsSync(`/sys/fs/cgroup/memory/moat/${metadata.uid}`), 'no cgroup left');
    const ps = await run('ps', ['-eo', 'args'], { allowFail: true });
    assert.doesNotMatch(ps.stdout, new RegExp(`runsc.*${metadata.uid}`), 'no runsc process left');
  });
});

describe('gvisor: check() on hosts that differ', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'moat-gvisor-check-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  /** A runsc that is the real one except for what `script` (bash, run first with the arguments) decides. */
  async function fakeRunsc(name: string, script: string) {
    const bin = join(dir, name);
    await writeFile(bin, `#!/bin/bash\n${script}\nexec runsc "$@"\n`);
    await chmod(bin, 0o755);
    return new GvisorDriver({ root: join(dir, `root-${name}`), cacheDir: dir, binary: bin });
  }

  test("runc's seccomp profile for gVisor: EPERM rules as they are, clone3's ENOSYS as a trace, runc's own untouched", () => {
    const runc = defaultSeccompProfile();
    const before = JSON.stringify(runc);
    const g = seccompForGvisor(runc);
    assert.equal(JSON.stringify(runc), before, "runc's profile is not changed");
    for (const [i, rule] of runc.syscalls.entries()) {
      if (rule.names.includes('clone3')) assert.deepEqual(g.syscalls[i], { names: ['clone3'], action: 'SCMP_ACT_TRACE' });
      else assert.deepEqual(g.syscalls[i], rule);
    }
    // Then the two ptrace requests that could ask for seccomp stops, when they do.
    assert.deepEqual(
      g.syscalls.slice(runc.syscalls.length).map((r) => [r.names, r.action, r.errnoRet, r.args?.map((a) => [a.index, a.value, a.op])]),
      [0x4200, 0x4206].map((request) => [
        ['ptrace'],
        'SCMP_ACT_ERRNO',
        1,
        [
          [0, request, 'SCMP_CMP_EQ'],
          [3, 0x80, 'SCMP_CMP_MASKED_EQ'],
        ],
      ]),
    );
    assert.throws(
      () => seccompForGvisor({ ...runc, syscalls: [{ names: ['open_by_handle_at'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 }] }),
      /gVisor cannot apply a seccomp rule that returns errno 13/,
    );
  });

  test('check() names the package to install when runsc is missing', async () => {
    const driver = new GvisorDriver({ root: '/nonexistent', cacheDir: '/nonexistent', binary: 'runsc-not-installed' });
    await assert.rejects(driver.check(), /runsc-not-installed is not installed: apt-get install runsc/);
  });

  test('a runsc older than the oldest supported release is refused, saying what to install', async () => {
    const driver = await fakeRunsc('old', `[[ $1 == --version ]] && { echo 'runsc version 0.0~20221219.0'; exit 0; }`);
    await assert.rejects(driver.check(), new RegExp(`runsc 20221219 is too old: ${MIN_RUNSC_RELEASE} or later is needed.*bookworm-backports`));
  });

  test('where systrap cannot run a sandbox, ptrace is used and the reason is reported', async () => {
    const driver = await fakeRunsc(
      'nosystrap',
      `for a; do [[ $a == --platform=systrap ]] && { echo 'systrap: no seccomp here (simulated)' >&2; exit 1; }; done`,
    );
    await driver.check();
    assert.equal(driver.platform, 'ptrace');
    assert.match(
      (await driver.degraded()) ?? '',
      /^gVisor runs on its ptrace platform: ptrace \(systrap failed here: runsc do true exited 1: systrap: no seccomp here \(simulated\)\)/,
    );
  });

  test('where no platform can run a sandbox, check() fails with both reasons', async () => {
    const driver = await fakeRunsc('noplatform', `[[ $* == *' do true' ]] && { echo "cannot start: $*" >&2; exit 1; }`);
    await assert.rejects(
      driver.check(),
      /gVisor cannot run a sandbox here: systrap: .*cannot start: .*--platform=systrap.*; ptrace: .*cannot start: .*--platform=ptrace/,
    );
  });

  test('an unknown runtime class is a 422 that lists gvisor', async () => {
    const server = await startTestServer();
    try {
      const body = gvisorBody('x');
      body.spec.podTemplate.spec.runtimeClassName = 'kata';
      const res = await server.api(NS, { method: 'POST', json: body });
      assert.equal(res.status, 422);
      assert.match(await res.text(), /unknown runtime \\"kata\\".*gvisor/);
    } finally {
      await server.close();
    }
  });
});
