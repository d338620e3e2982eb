import { request } from 'node:http';
import type { Probe, Sandbox } from '@moat/core';
import type { SandboxAgent } from '@moat/runtime';

/**
 * Readiness probes, run from inside the sandbox: exec through the init agent,
 * httpGet and tcpSocket through a TCP connection the agent opens in the
 * sandbox's own network namespace. No network path from the host is needed.
 */
export async function runProbe(agent: SandboxAgent, sandbox: Sandbox, probe: Probe): Promise<void> {
  const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
  if (probe.exec) {
    const handle = agent.exec({ command: probe.exec.command });
    const timer = setTimeout(() => handle.kill(), timeoutMs);
    try {
      const { exitCode } = await handle.done;
      if (exitCode !== 0) throw new Error(`exec probe ${JSON.stringify(probe.exec.command)} exited with ${exitCode}`);
    } finally {
      clearTimeout(timer);
    }
    return;
  }
  if (probe.tcpSocket) {
    const socket = await agent.dial(portNumber(sandbox, probe.tcpSocket.port), { timeoutMs });
    socket.destroy();
    return;
  }
  if (probe.httpGet) {
    const { path = '/', port, httpHeaders = [] } = probe.httpGet;
    const socket = await agent.dial(portNumber(sandbox, port), { timeoutMs });
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          createConnection: () => socket,
          path,
          headers: {
            host: `localhost:${portNumber(sandbox, port)}`,
            'user-agent': 'moat-probe',
            ...Object.fromEntries(httpHeaders.map((h) => [h.name, h.value])),
          },
          timeout: timeoutMs,
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end();
    }).finally(() => socket.destroy());
    if (status < 200 || status >= 400) throw new Error(`GET ${path} on port ${port} answered ${status}`);
    return;
  }
  throw new Error('the probe names no check: give exec, httpGet or tcpSocket');
}

/** A probe port is a number or the name of one of the container's ports. */
export function portNumber(sandbox: Sandbox, port: number | string): number {
  if (typeof port === 'number') return port;
  const found = sandbox.spec.podTemplate.spec.containers[0]!.ports?.find((p) => p.name === port);
  if (!found) throw new Error(`the probe names port "${port}", which the container does not declare`);
  return found.containerPort;
}
