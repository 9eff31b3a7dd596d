// `vdisk-agent controller [flags]`: runs the operator until SIGTERM/SIGINT, then stops gracefully
// (running reconciles finish, the Lease is released). Flags fall back to env, then to defaults that
// suit an in-cluster Deployment (config/manager/).

import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { createLogger } from './logger.ts';
import { Manager } from './manager.ts';

export const CONTROLLER_USAGE = `usage: vdisk-agent controller [options]
  --kubeconfig=PATH             kubeconfig (default: in-cluster, else $KUBECONFIG / ~/.kube/config)
  --namespace=NS                watch one namespace (default: all)
  --agent-image=IMAGE           image of imager/attach pods (env VDISK_AGENT_IMAGE, default vdisk:dev)
  --image-pull-policy=POLICY    Always | IfNotPresent | Never (default IfNotPresent)
  --workers=N                   concurrent reconciles (default 4)
  --metrics-port=PORT           /healthz /readyz /metrics port, 0 = any, -1 = off (default 8080)
  --leader-elect                use a Lease to run one active replica
  --leader-election-namespace=NS  Lease namespace (env POD_NAMESPACE, default vdisk-system)
`;

/** Runs the controller; resolves with the exit code after a signal (0) or lost leadership (1). */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'agent-image': { type: 'string' },
      'image-pull-policy': { type: 'string' },
      workers: { type: 'string' },
      'metrics-port': { type: 'string' },
      'leader-elect': { type: 'boolean', default: false },
      'leader-election-namespace': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(CONTROLLER_USAGE);
    return 0;
  }
  const log = createLogger('vdisk-controller');
  const kubeConfig = new KubeConfig();
  if (values.kubeconfig) kubeConfig.loadFromFile(values.kubeconfig);
  else kubeConfig.loadFromDefault();
  const pullPolicy = values['image-pull-policy'] ?? 'IfNotPresent';
  if (pullPolicy !== 'Always' && pullPolicy !== 'IfNotPresent' && pullPolicy !== 'Never') {
    process.stderr.write(
      `vdisk-agent controller: bad --image-pull-policy '${pullPolicy}'\n${CONTROLLER_USAGE}`,
    );
    return 1;
  }
  const metricsPort = Number(values['metrics-port'] ?? 8080);
  let lostLeadership = false;
  let wake: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const manager = new Manager({
    kubeConfig,
    log,
    ...(values.namespace ? { namespace: values.namespace } : {}),
    settings: {
      agentImage: values['agent-image'] ?? process.env.VDISK_AGENT_IMAGE ?? 'vdisk:dev',
      imagePullPolicy: pullPolicy,
    },
    workers: Number(values.workers ?? 4),
    ...(metricsPort >= 0 ? { httpPort: metricsPort } : {}),
    ...(values['leader-elect']
      ? {
          leaderElection: {
            namespace: values['leader-election-namespace'] ?? process.env.POD_NAMESPACE ?? 'vdisk-system',
            identity: `${hostname()}-${process.pid}`,
          },
        }
      : {}),
    onLostLeadership: () => {
      lostLeadership = true;
      wake();
    },
  });
  const onSignal = (signal: string) => {
    log.info({ signal }, 'Received signal, shutting down');
    wake();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  await manager.start();
  await finished;
  await manager.stop();
  return lostLeadership ? 1 : 0;
}
