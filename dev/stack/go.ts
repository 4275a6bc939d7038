// The Go toolchain the stack builds its Go servers with (OPA, MinIO, etcd, kube-apiserver, helm).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { permanentError } from '../../lib/errors.ts';
import { commandExists } from './process.ts';
import type { StackContext } from './types.ts';

const GO_CANDIDATES = ['/usr/local/go/bin/go', 'go'];

/** The `go` command; STACK_NEEDS_GO naming what needed it and where a prebuilt binary could go instead. */
export async function findGo(component: string, what: string, binary: string): Promise<string> {
  for (const candidate of GO_CANDIDATES) {
    if (candidate.startsWith('/') ? existsSync(candidate) : await commandExists(candidate)) return candidate;
  }
  throw permanentError(
    'STACK_NEEDS_GO',
    `${component}: building ${what} needs the Go toolchain (go 1.24 or newer at ${GO_CANDIDATES[0]} or on the PATH); install Go or put the binary at ${binary}`,
  );
}

/**
 * Go's environment for the stack's builds: static pure-Go binaries (into `binDir` for `go install`,
 * when given). Go keeps its module and build caches under $HOME; without a HOME (a bare CI
 * environment) they go to `.stack/go`, with a writable module cache so deleting `.stack/` needs no chmod.
 */
export function goBuildEnv(ctx: StackContext, binDir?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...ctx.env, CGO_ENABLED: '0', GOFLAGS: '-mod=mod', GOTOOLCHAIN: 'local' };
  if (binDir !== undefined) env.GOBIN = binDir;
  if (!ctx.env.HOME && !ctx.env.GOCACHE && !ctx.env.XDG_CACHE_HOME) env.GOCACHE = join(ctx.stackDir, 'go', 'cache');
  if (!ctx.env.HOME && !ctx.env.GOPATH) {
    env.GOPATH = join(ctx.stackDir, 'go', 'path');
    env.GOFLAGS = '-mod=mod -modcacherw';
  }
  return env;
}
