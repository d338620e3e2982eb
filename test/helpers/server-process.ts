// Runs a Moat server as its own process, so tests can SIGKILL it. Prints {"url","adminKey"} once listening.
import { pino } from 'pino';
import { startServer } from '@moat/server';
import { TEST_NETWORK, sharedImagesDir } from './server.js';

const server = await startServer({
  port: 0,
  dataDir: process.argv[2]!,
  imagesDir: sharedImagesDir(),
  network: TEST_NETWORK,
  logger: pino({ level: 'silent' }),
});
process.stdout.write(JSON.stringify({ url: server.url, adminKey: server.adminKey }) + '\n');
