export * from './types.js';
export { EgressProxy } from './proxy.js';
export { addressClass, isPublicAddress } from './addresses.js';
export { parseAbsoluteTarget, parseConnectTarget } from './target.js';
export { TokenBucket } from './throttle.js';
