// `npm run generate:types`: writes lib/contracts/generated-types.ts from schemas/*.avsc (see
// dev/contract-types.ts). With `-- --check` it writes nothing and exits 1 when the checked-in file is
// stale; the unit test test/unit/lib/contracts/generated-types.test.ts makes the same check in CI.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultSchemasDir } from '../lib/contracts/schemas.ts';
import { GENERATED_TYPES_FILE, generateFromSchemas } from './contract-types.ts';

const root = join(import.meta.dirname, '..');
const file = join(root, GENERATED_TYPES_FILE);
const check = process.argv.includes('--check');

const generated = generateFromSchemas(defaultSchemasDir(root));
let current: string | undefined;
try {
  current = readFileSync(file, 'utf8');
} catch {
  current = undefined;
}

if (current === generated) {
  console.log(`${GENERATED_TYPES_FILE} is up to date`);
} else if (check) {
  console.error(`${GENERATED_TYPES_FILE} is stale: run \`npm run generate:types\` and commit the result`);
  process.exit(1);
} else {
  writeFileSync(file, generated);
  console.log(`wrote ${GENERATED_TYPES_FILE}`);
}
