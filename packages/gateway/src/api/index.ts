export { ApiGateway } from './gateway.js';
export { GatewayError, type ApiGatewayOptions, type GatewayCall, type LlmApi, type Upstream } from './types.js';
export { Redactor, REDACTED } from './redact.js';
export { UsageMeter } from './usage.js';
