// A Moat server in cluster mode as its own process, so tests can SIGKILL it: the cluster of $KUBECONFIG, the
// database of $MOAT_DATABASE_URL. Prints {"url","adminKey"} once listening.
import { pino } from 'pino';
import { startServer } from '@moat/server';

const server = await startServer({
  port: 0,
  dataDir: process.argv[2]!,
  kubernetes: { kubeconfig: process.env.KUBECONFIG! },
  logger: pino({ level: process.env.MOAT_TEST_LOG ?? 'silent' }),
});
process.stdout.write(JSON.stringify({ url: server.url, adminKey: server.adminKey }) + '\n');
