export {
  AgentClient,
  AgentError,
  type AgentClientOptions,
  type AgentTransport,
  type DialOptions,
  type Entry,
  type ExecHandle,
  type ExecHandlers,
  type ExecRequest,
  type ExecExit,
  type SandboxAgent,
} from './client.js';
export { AgentMux, MuxStream } from './mux.js';
