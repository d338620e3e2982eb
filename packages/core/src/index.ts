export * from './errors.js';
export * from './names.js';
export * from './quantity.js';
export * from './sandbox.js';
export * from './limits.js';
export * from './egress.js';
export * from './extensions.js';
export * from './conditions.js';
