// Every error the engine raises: one base class, one stable `code` per subclass, typed extra fields.
// Callers (CLI exit codes, the imager's termination message, the NBD server's error replies) match on
// `err.code`, never on message text or `instanceof` across package boundaries. docs/errors.md lists them.

export type VdiskErrorCode =
  | 'VDISK_EFORMAT'
  | 'VDISK_ECORRUPT'
  | 'VDISK_ENOTSUP'
  | 'VDISK_EINVAL'
  | 'VDISK_EIO'
  | 'VDISK_ENOENT'
  | 'VDISK_EPERM'
  | 'VDISK_ENOSPC'
  | 'VDISK_EBUSY';

export abstract class VdiskError extends Error {
  abstract readonly code: VdiskErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Bad magic, unknown version, a header field out of range: the file is not what it claims to be. */
export class ImageFormatError extends VdiskError {
  override readonly name = 'ImageFormatError';
  readonly code = 'VDISK_EFORMAT' as const;
  readonly file: string;
  readonly offsetBytes: number | undefined;
  constructor(args: { file: string; offsetBytes?: number; message: string; cause?: unknown }) {
    super(
      `${args.file}${args.offsetBytes === undefined ? '' : ` (offset ${args.offsetBytes})`}: ${args.message}`,
      { cause: args.cause },
    );
    this.file = args.file;
    this.offsetBytes = args.offsetBytes;
  }
}

/** Metadata contradicts itself (an L2 entry past EOF, a used cluster with refcount 0, ...). */
export class CorruptImageError extends VdiskError {
  override readonly name = 'CorruptImageError';
  readonly code = 'VDISK_ECORRUPT' as const;
  readonly file: string;
  readonly offsetBytes: number | undefined;
  readonly lengthBytes: number | undefined;
  /** A fatal corruption marks the image corrupt: no further writes. */
  readonly fatal: boolean;
  constructor(args: {
    file: string;
    offsetBytes?: number;
    lengthBytes?: number;
    fatal?: boolean;
    message: string;
    cause?: unknown;
  }) {
    const where =
      args.offsetBytes === undefined
        ? ''
        : ` (offset ${args.offsetBytes}${args.lengthBytes === undefined ? '' : `, length ${args.lengthBytes}`})`;
    super(`${args.file}${where}: ${args.message}`, { cause: args.cause });
    this.file = args.file;
    this.offsetBytes = args.offsetBytes;
    this.lengthBytes = args.lengthBytes;
    this.fatal = args.fatal ?? false;
  }
}

/** A capability the format or this build lacks, or an unknown incompatible feature bit. */
export class UnsupportedError extends VdiskError {
  override readonly name = 'UnsupportedError';
  readonly code = 'VDISK_ENOTSUP' as const;
  readonly format: string;
  readonly feature: string;
  constructor(args: { format: string; feature: string; message?: string; cause?: unknown }) {
    super(args.message ?? `${args.format} does not support ${args.feature}`, { cause: args.cause });
    this.format = args.format;
    this.feature = args.feature;
  }
}

/** A bad `-o` value, CLI flag, size string or CR field. */
export class InvalidOptionError extends VdiskError {
  override readonly name = 'InvalidOptionError';
  readonly code = 'VDISK_EINVAL' as const;
  readonly option: string;
  readonly value: unknown;
  constructor(args: { option: string; value?: unknown; message: string; cause?: unknown }) {
    super(args.message, { cause: args.cause });
    this.option = args.option;
    this.value = args.value;
  }
}

/** The filesystem failed a read, write, flush or open. `errno` is Node's string code (`ENOSPC`, ...). */
export class ImageIoError extends VdiskError {
  override readonly name = 'ImageIoError';
  readonly code = 'VDISK_EIO' as const;
  readonly file: string;
  readonly offsetBytes: number | undefined;
  readonly lengthBytes: number | undefined;
  readonly errno: string | undefined;
  constructor(args: {
    file: string;
    offsetBytes?: number;
    lengthBytes?: number;
    errno?: string;
    message: string;
    cause?: unknown;
  }) {
    super(`${args.file}: ${args.message}`, { cause: args.cause });
    this.file = args.file;
    this.offsetBytes = args.offsetBytes;
    this.lengthBytes = args.lengthBytes;
    this.errno = args.errno;
  }
}

/** A file the caller named (image, backing file, extent, data file) does not exist. */
export class NotFoundError extends VdiskError {
  override readonly name = 'NotFoundError';
  readonly code = 'VDISK_ENOENT' as const;
  readonly file: string;
  constructor(args: { file: string; message?: string; cause?: unknown }) {
    super(args.message ?? `${args.file}: No such file or directory`, { cause: args.cause });
    this.file = args.file;
  }
}

/** Refused by policy: a write to a read-only device, a backing file escaping its folder, a probed raw sector 0. */
export class PermissionError extends VdiskError {
  override readonly name = 'PermissionError';
  readonly code = 'VDISK_EPERM' as const;
  readonly file: string | undefined;
  constructor(args: { file?: string; message: string; cause?: unknown }) {
    super(args.file ? `${args.file}: ${args.message}` : args.message, { cause: args.cause });
    this.file = args.file;
  }
}

/** The device is in use (locked by another writer, or attached). */
export class BusyError extends VdiskError {
  override readonly name = 'BusyError';
  readonly code = 'VDISK_EBUSY' as const;
  readonly file: string | undefined;
  constructor(args: { file?: string; message: string; cause?: unknown }) {
    super(args.file ? `${args.file}: ${args.message}` : args.message, { cause: args.cause });
    this.file = args.file;
  }
}

export function isVdiskError(err: unknown): err is VdiskError {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && code.startsWith('VDISK_');
}
