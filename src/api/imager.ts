// The contract between the controller and the imager agent: the request (argv of `vdisk-agent imager`)
// and the result the imager writes as JSON to its termination message (kept < 4 KiB, the kubelet's
// limit). Both sides import this file, so the argv spelling and the result shape cannot drift apart.

import { z } from 'zod';

export const IMAGER_OPERATIONS = [
  'create',
  'import',
  'clone',
  'restore',
  'resize',
  'snapshot-create',
  'snapshot-delete',
  'info',
] as const;
export type ImagerOperation = (typeof IMAGER_OPERATIONS)[number];

/** Where the PVCs are mounted in the imager pod. */
export const DATA_MOUNT_PATH = '/data';
export const SOURCE_MOUNT_PATH = '/source';
export const HEADERS_MOUNT_PATH = '/etc/vdisk/http';

/** Exit code for failures a retry cannot fix (checksum mismatch, bad input): the Job fails at once. */
export const IMAGER_PERMANENT_FAILURE_EXIT_CODE = 2;

export const imagerRequestSchema = z.object({
  operation: z.enum(IMAGER_OPERATIONS),
  /** Image file inside the pod (`/data/disk.qcow2`). */
  image: z.string().min(1).max(1024),
  format: z.string().min(1).max(16).optional(),
  sizeBytes: z.int().min(0).optional(),
  options: z.record(z.string(), z.string()).optional(),
  url: z.string().max(2048).optional(),
  sha256: z.string().length(64).optional(),
  sourceFormat: z.string().max(16).optional(),
  /** File of `Name: value` header lines for the http request. */
  headersFile: z.string().max(1024).optional(),
  /** Source image for clone/restore. */
  source: z.string().max(1024).optional(),
  /** Snapshot name (snapshot-create/-delete; restore from an internal snapshot). */
  snapshot: z.string().max(256).optional(),
  mode: z.enum(['internal', 'external']).optional(),
});
export type ImagerRequest = z.infer<typeof imagerRequestSchema>;

/** argv for `vdisk-agent imager` (after the word `imager`). */
export function imagerArgs(request: ImagerRequest): string[] {
  const args = [request.operation, `--image=${request.image}`];
  if (request.format) args.push(`--format=${request.format}`);
  if (request.sizeBytes !== undefined) args.push(`--size=${request.sizeBytes}`);
  for (const [key, value] of Object.entries(request.options ?? {}).sort())
    args.push(`--option=${key}=${value}`);
  if (request.url) args.push(`--url=${request.url}`);
  if (request.sha256) args.push(`--sha256=${request.sha256}`);
  if (request.sourceFormat) args.push(`--source-format=${request.sourceFormat}`);
  if (request.headersFile) args.push(`--headers-file=${request.headersFile}`);
  if (request.source) args.push(`--source=${request.source}`);
  if (request.snapshot) args.push(`--snapshot=${request.snapshot}`);
  if (request.mode) args.push(`--mode=${request.mode}`);
  return args;
}

/** Parses imager argv back into a request; throws a TypeError naming the bad argument. */
export function parseImagerArgs(argv: readonly string[]): ImagerRequest {
  const [operation, ...rest] = argv;
  const draft: Record<string, unknown> = { operation };
  const options: Record<string, string> = {};
  const names: Record<string, string> = {
    image: 'image',
    format: 'format',
    url: 'url',
    sha256: 'sha256',
    'source-format': 'sourceFormat',
    'headers-file': 'headersFile',
    source: 'source',
    snapshot: 'snapshot',
    mode: 'mode',
  };
  for (const arg of rest) {
    const match = /^--([a-z0-9-]+)=(.*)$/s.exec(arg);
    if (!match) throw new TypeError(`imager: unexpected argument '${arg}' (expected --name=value)`);
    const [, name = '', value = ''] = match;
    if (name === 'size') {
      if (!/^\d+$/.test(value)) throw new TypeError(`imager: --size must be a byte count, got '${value}'`);
      draft.sizeBytes = Number(value);
    } else if (name === 'option') {
      const equals = value.indexOf('=');
      if (equals <= 0) throw new TypeError(`imager: --option must be key=value, got '${value}'`);
      options[value.slice(0, equals)] = value.slice(equals + 1);
    } else if (names[name]) {
      draft[names[name]] = value;
    } else {
      throw new TypeError(`imager: unknown option --${name}`);
    }
  }
  if (Object.keys(options).length > 0) draft.options = options;
  const parsed = imagerRequestSchema.safeParse(draft);
  if (!parsed.success) {
    throw new TypeError(
      `imager: ${parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`).join('; ')}`,
    );
  }
  return parsed.data;
}

export const imagerImageSchema = z.object({
  path: z.string(),
  format: z.string(),
  virtualSize: z.number(),
  actualSize: z.number().optional(),
  clusterSize: z.number().optional(),
  snapshots: z.array(z.string()).optional(),
  sha256: z.string().optional(),
});

export const imagerResultSchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    operation: z.enum(IMAGER_OPERATIONS),
    image: imagerImageSchema.optional(),
    snapshot: z.object({ name: z.string(), creationTime: z.string().optional() }).optional(),
    durationMs: z.number().optional(),
  }),
  z.object({
    ok: z.literal(false),
    operation: z.string(),
    /** A VdiskError code, or VDISK_ECHECKSUM / VDISK_EHTTP from the imager itself. */
    code: z.string(),
    message: z.string(),
    expectedSha256: z.string().optional(),
    actualSha256: z.string().optional(),
  }),
]);
export type ImagerResult = z.infer<typeof imagerResultSchema>;

/** Parses a termination message; undefined when it is absent or not an imager result. */
export function parseImagerResult(message: string | undefined): ImagerResult | undefined {
  if (!message) return undefined;
  try {
    const parsed = imagerResultSchema.safeParse(JSON.parse(message));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
