// Secrets by id, as qemu's `--object secret,id=ID,...` objects: defined once per process (the CLI
// from its argv, an agent from a mounted Kubernetes Secret) and looked up by the id an image option
// names (`encrypt.key-secret=ID`, `key-secret=ID`). Values are never logged or put in messages.

import { InvalidOptionError } from '../errors.ts';

const store = new Map<string, Buffer>();

/** Defines (or replaces) the secret `id`. */
export function defineSecret(id: string, value: Uint8Array): void {
  store.set(id, Buffer.from(value));
}

/** Forgets every secret (tests; a long-lived process between jobs). */
export function clearSecrets(): void {
  for (const value of store.values()) value.fill(0);
  store.clear();
}

/** The bytes of secret `id`; throws InvalidOptionError naming `option` when no such secret exists. */
export function lookupSecret(id: string, option: string): Buffer {
  const value = store.get(id);
  if (!value) throw new InvalidOptionError({ option, value: id, message: `No secret with id '${id}'` });
  return value;
}
