#!/usr/bin/env node
// The operator CLI. It runs the TypeScript sources directly on Node 24 (type stripping), which the
// project pins as a devDependency: run it through `npx agent-manager` or an npm script.
import { dirname } from 'node:path';

const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  console.error(
    `agent-manager needs Node.js 24 (this is ${process.version}). Run it as \`npx agent-manager …\` or through ` +
      '`npm run …` after `npm ci`: the project installs Node 24 as a devDependency.',
  );
  process.exit(2);
}

// kafkajs 2.2.4 arms a timer with a negative delay; Node 24 warns about it on every run. Nothing
// else is filtered.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = (warning, ...rest) => {
  const name = typeof warning === 'object' ? warning.name : typeof rest[0] === 'string' ? rest[0] : rest[0]?.type;
  if (name === 'TimeoutNegativeWarning') return;
  emitWarning(warning, ...rest);
};

const { main } = await import('../cli/main.ts');
process.exitCode = await main(dirname(import.meta.dirname), process.argv);
// Every command closes what it opened; should a client library still hold a socket or timer, the
// process ends anyway instead of lingering (a stuck pod is worse than a prompt exit).
setTimeout(() => process.exit(), 3_000).unref();
