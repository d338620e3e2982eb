import type { Command } from 'commander';
import { resolve } from 'node:path';
import { parseIntArg } from '../args.js';
import { configPath, readConfig, writeConfig } from '../config.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';

interface UpOptions {
  port?: string;
  host?: string;
  dataDir?: string;
  kubernetes?: boolean;
  kubeconfig?: string;
}

export function registerUp(program: Command, ctx: Context): void {
  program
    .command('up')
    .alias('server')
    .description('run the Moat server in the foreground (Ctrl-C stops it)')
    .option('--port <port>', 'port to listen on (default 6628)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--data-dir <dir>', 'where sandboxes, images and the database live')
    .option('--kubernetes', 'run sandboxes on a Kubernetes cluster with agent-sandbox (in a pod: its service account; else $KUBECONFIG)')
    .option('--kubeconfig <file>', 'the cluster to use with --kubernetes')
    .action(async (opts: UpOptions) => {
      ctx.exitCode = await up(ctx, opts);
    });
}

async function up(ctx: Context, opts: UpOptions): Promise<number> {
  const { io } = ctx;
  // Loaded here only: the server pulls in native modules that the other commands never need.
  const { startServer } = await import('@moat/server');
  if (opts.kubeconfig && !opts.kubernetes) throw new CliError('--kubeconfig needs --kubernetes', 2);
  const kubeconfig = opts.kubeconfig === undefined ? undefined : resolve(io.cwd, opts.kubeconfig);
  const starting = startServer({
    ...(opts.kubernetes ? { kubernetes: kubeconfig ? { kubeconfig } : {} } : {}),
    port: opts.port === undefined ? undefined : parseIntArg(opts.port, '--port', 0, 65535),
    host: opts.host,
    dataDir: opts.dataDir === undefined ? undefined : resolve(io.cwd, opts.dataDir),
    log: (line) => ctx.err(line.endsWith('\n') ? line : `${line}\n`),
  });
  // A cluster that cannot be reached or lacks agent-sandbox is the user's to fix, not a bug: its message says how.
  const server = await (opts.kubernetes ? starting.catch((err: Error) => Promise.reject(new CliError(err.message))) : starting);

  const file = configPath(io.env);
  let saved = true;
  try {
    await writeConfig(file, { ...(await readConfig(file).catch(() => ({}))), url: server.url, apiKey: server.adminKey });
  } catch (err) {
    saved = false;
    ctx.err(`warning: could not save ${file} (${(err as Error).message}); set MOAT_URL and MOAT_API_KEY in other terminals\n`);
  }
  ctx.out(`Moat is running at ${server.url}\n`);
  ctx.out(`Admin API key: ${server.adminKey}\n`);
  if (saved) ctx.out(`Saved to ${file}: \`moat sandbox list\` works from any terminal.\n`);
  ctx.out('Press Ctrl-C to stop.\n');

  await new Promise<void>((done) => {
    const stop = () => {
      io.signals.off('SIGINT', stop);
      io.signals.off('SIGTERM', stop);
      // A second Ctrl-C while closing means "now".
      const force = () => io.exit(130);
      io.signals.on('SIGINT', force);
      io.signals.on('SIGTERM', force);
      done();
    };
    io.signals.on('SIGINT', stop);
    io.signals.on('SIGTERM', stop);
  });
  ctx.err('Stopping Moat...\n');
  await server.close();
  return 0;
}
