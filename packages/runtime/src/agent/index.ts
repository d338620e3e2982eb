export { AgentClient, AgentError, type Entry, type ExecHandle, type ExecRequest } from './client.js';
