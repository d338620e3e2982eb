export { startServer, prepareCatalogImage, defaultDataDir, DEFAULT_PORT, VERSION, type ServerOptions, type RunningServer } from './server.js';
export { type NetworkOptions } from './network.js';
