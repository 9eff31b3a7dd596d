// Random identifiers for new images (vdi/vpc UUIDs, a vmdk CID, vhdx GUIDs). node:crypto is loaded on
// first use rather than imported: loading it costs ~9 ms of every start-up, and opening, checking or
// converting from an existing image never needs it.

function crypto(): typeof import('node:crypto') {
  return process.getBuiltinModule('node:crypto');
}

export function randomUUID(): string {
  return crypto().randomUUID();
}

export function randomBytes(count: number): Buffer {
  return crypto().randomBytes(count);
}

/** An integer in [min, max), as node:crypto's randomInt. */
export function randomInt(min: number, max: number): number {
  return crypto().randomInt(min, max);
}
