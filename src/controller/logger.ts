// The controller's root pino logger: JSON lines to stdout, level from VDISK_LOG_LEVEL (info), and
// the `err` serializer that keeps an error's code and offsets. Secrets never reach log fields.

import { pino, stdSerializers } from 'pino';

export type Logger = pino.Logger;

/** A root logger named `component`; `destination` defaults to stdout (tests pass a stream). */
export function createLogger(component: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      name: component,
      level: process.env.VDISK_LOG_LEVEL ?? 'info',
      serializers: { err: stdSerializers.err },
      redact: ['headers', '*.headers', 'secret', '*.secret'],
    },
    destination,
  );
}
