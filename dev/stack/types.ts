export interface StackContext {
  /** The project's root folder. */
  readonly root: string;
  /** `<root>/.stack`: downloads, data and logs, git-ignored. */
  readonly stackDir: string;
  /** Progress output for the operator (one line per step). */
  readonly progress: (line: string) => void;
  /** The environment `stack up` was called with: a configured DATABASE_URL/REDIS_URL is reused. */
  readonly env: NodeJS.ProcessEnv;
}

export type Health = 'healthy' | 'down' | 'unhealthy';

export interface ComponentStatus {
  readonly name: string;
  readonly address: string;
  readonly health: Health;
  /** `stack` when this stack started it, `external` when it reuses a configured server. */
  readonly owner: 'stack' | 'external' | 'none';
  readonly version: string;
  readonly pid?: number | undefined;
}

/** One real server of the local stack. Every method is idempotent. */
export interface StackComponent {
  readonly name: string;
  readonly version: string;
  readonly address: string;
  /** Variables that point the services at this component. */
  env(ctx: StackContext): Record<string, string>;
  /** Installs what is missing (quick when already installed). */
  install(ctx: StackContext): Promise<void>;
  /** Starts it and waits until healthy; reuses what is already healthy. Returns whether it started it. */
  start(ctx: StackContext): Promise<'started' | 'reused' | 'external'>;
  stop(ctx: StackContext): Promise<boolean>;
  status(ctx: StackContext): Promise<ComponentStatus>;
}
