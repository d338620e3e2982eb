export { main, buildProgram } from './cli.js';
export type { Io } from './io.js';
export { configPath, readConfig, writeConfig, resolveConnection, keyHint, NOT_CONFIGURED, type ConfigFile, type Connection } from './config.js';
export { KINDS, SANDBOX_KIND, kindByName, type ResourceKind } from './kinds.js';
