// `npm run bench -- <name> [options]`: runs one benchmark against the local stack (`stack up` first).
const benches: Record<string, () => Promise<{ run: (args: string[]) => Promise<void> }>> = {
  runtime: () => import('./runtime.ts'),
  hotpath: () => import('./hotpath.ts'),
  provisioning: () => import('./provisioning.ts'),
  api: () => import('./api.ts'),
  heartbeat: () => import('./heartbeat.ts'),
  archiver: () => import('./archiver.ts'),
  verify: () => import('./verify.ts'),
};

const [name, ...args] = process.argv.slice(2);
const load = name === undefined ? undefined : benches[name];
if (!load) {
  console.error(`usage: npm run bench -- <${Object.keys(benches).join('|')}> [options]`);
  process.exit(2);
}
await (await load()).run(args);
