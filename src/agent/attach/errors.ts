// Errors of the attach agent: a node command that failed (with its argv, exit code and stderr), and
// a state the agent cannot proceed from (no free nbd device, a partition kpartx did not map).
// `code` is stable for the termination message and logs; messages are for people.

export class NodeCommandError extends Error {
  override readonly name = 'NodeCommandError';
  readonly code = 'VDISK_EATTACH_COMMAND' as const;
  readonly command: string;
  readonly args: readonly string[];
  readonly exitCode: number;
  readonly stderr: string;
  constructor(args: { command: string; args: readonly string[]; exitCode: number; stderr: string }) {
    super(
      `${[args.command, ...args.args].join(' ')} failed with exit code ${args.exitCode}: ${args.stderr.trim().slice(0, 2000)}`,
    );
    this.command = args.command;
    this.args = args.args;
    this.exitCode = args.exitCode;
    this.stderr = args.stderr;
  }
}

export class AttachStateError extends Error {
  override readonly name = 'AttachStateError';
  readonly code = 'VDISK_EATTACH_STATE' as const;
  readonly device: string | undefined;
  constructor(args: { message: string; device?: string; cause?: unknown }) {
    super(args.message, { cause: args.cause });
    this.device = args.device;
  }
}
