// `vdisk-agent <controller|imager|attach> [args]`: the container image's one entrypoint. Each role's
// module is loaded only when chosen (dynamic import), so the imager never loads the Kubernetes client
// and the controller never loads the NBD server. Each role exports `main(argv): Promise<exitCode>`.

const ROLES: Record<string, () => Promise<{ main: (argv: string[]) => Promise<number> }>> = {
  controller: () => import('../controller/main.ts'),
  imager: () => import('./imager/main.ts'),
  attach: () => import('./attach/main.ts'),
};

export const AGENT_USAGE = `usage: vdisk-agent <role> [options]

Roles:
  controller   run the vdisk operator (reconciles VirtualDisk and DiskSnapshot)
  imager       one image operation on a PVC (create, import, clone, restore, resize, snapshot-*)
  attach       serve an image over NBD, bind /dev/nbdN, map partitions, mount
`;

/** Runs one role; returns the process exit code. */
export async function runAgent(argv: string[]): Promise<number> {
  const [role, ...rest] = argv;
  const load = role ? ROLES[role] : undefined;
  if (!load) {
    process.stderr.write(
      role && role !== '--help' && role !== '-h'
        ? `vdisk-agent: unknown role '${role}'\n${AGENT_USAGE}`
        : AGENT_USAGE,
    );
    return role === '--help' || role === '-h' ? 0 : 1;
  }
  const module = await load();
  return module.main(rest);
}
