// Tests are TypeScript compiled by swc to CommonJS (ts-jest does not support TypeScript 7, and
// swc is much faster); `tsc --noEmit` does the type-checking separately.
/** @type {import('jest').Config} */
export default {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  moduleFileExtensions: ['ts', 'js', 'json'],
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      { jsc: { target: 'es2023', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } },
    ],
    '^.+\\.m?js$': ['@swc/jest', { jsc: { target: 'es2023' }, module: { type: 'commonjs' } }],
  },
  // @kubernetes/client-node and the ESM-only packages it loads (and canonicalize, ESM-only) are compiled to CommonJS too: Jest
  // cannot load ES modules from a CommonJS test without --experimental-vm-modules.
  transformIgnorePatterns: ['/node_modules/(?!(@kubernetes/client-node|openid-client|oauth4webapi|jose|socks-proxy-agent|agent-base|canonicalize)/)'],
  // Integration tests share one local stack; two workers keep the 2-core machines responsive.
  maxWorkers: 2,
  testTimeout: 120_000,
};
