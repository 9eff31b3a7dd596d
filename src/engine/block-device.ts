// The engine's one central abstraction: a guest-visible block device opened from an image file by a
// format driver. Commands (convert, check, map, ...), the NBD server and the agents are written once
// against this interface and never import a format's folder. Offsets and lengths are bytes; callers
// go through guarded-device.ts, which checks range and read-only once, so drivers trust their arguments.

/** One run of the device as seen from *this* layer of a backing chain. */
export interface Extent {
  offsetBytes: number;
  lengthBytes: number;
  /**
   * This layer defines the content (data, a zero cluster, a raw hole). False: reads fall through to the
   * backing device, or read as zeros when there is none. qemu-img map calls the chain-wide OR "present".
   */
  allocated: boolean;
  /** The range reads as zeros (when `allocated`; an unallocated range reports the backing's answer). */
  zero: boolean;
  /** Bytes are stored for this range (not a hole, not a zero cluster). */
  data: boolean;
  /** Where the bytes sit in `hostFile`, when stored plainly there (uncompressed, unencrypted, contiguous). */
  hostOffsetBytes?: number;
  /** The file `hostOffsetBytes` refers to (the image itself, an extent file, an external data file). */
  hostFile?: string;
  compressed?: boolean;
}

export interface WriteOptions {
  /** Force unit access: the write is durable before the promise resolves. */
  fua?: boolean;
}

export interface WriteZeroesOptions extends WriteOptions {
  /** The range may be deallocated (a hole, an unallocated cluster that reads as zeros). */
  mayUnmap?: boolean;
  /** Fail with UnsupportedError instead of writing zeros slowly (NBD FAST_ZERO). */
  fastOnly?: boolean;
}

/** What `info` shows: filled by the driver, rendered by the CLI in qemu-img's shapes. */
export interface ImageInfo {
  format: string;
  filename: string;
  virtualSizeBytes: number;
  /** Host bytes used (st_blocks * 512 for a file), summed over extents and data files. */
  actualSizeBytes?: number;
  clusterSizeBytes?: number;
  dirty?: boolean;
  encrypted?: boolean;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFormat?: string;
  /** qemu-img's `format-specific` object, already in qemu's JSON field names. */
  formatSpecific?: { type: string; data: Record<string, unknown> };
  snapshots?: SnapshotInfo[];
}

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSizeBytes: number;
  dateSeconds: number;
  dateNanoseconds: number;
  vmClockNanoseconds: number;
  icount?: number;
}

export interface SnapshotOperations {
  list(): Promise<SnapshotInfo[]>;
  create(name: string): Promise<SnapshotInfo>;
  /** Reverts the active state to the snapshot's (qemu-img snapshot -a). */
  apply(nameOrId: string): Promise<void>;
  delete(nameOrId: string): Promise<void>;
  /** A read-only device showing the snapshot's content (convert -l, serve -l). */
  open(nameOrId: string): Promise<BlockDevice>;
}

export interface BlockDevice {
  /** Guest-visible size in bytes. */
  readonly sizeBytes: number;
  readonly isReadOnly: boolean;
  /** Smallest I/O size the device handles without read-modify-write (512 for most formats). */
  readonly preferredBlockSizeBytes: number;
  /** The device reads fall through to, if any (an already-opened, possibly guarded, device). */
  readonly backing: BlockDevice | undefined;
  readonly formatName: string;

  /** Fills `buffer` with the bytes at `offsetBytes`; the range lies inside the device. */
  read(offsetBytes: number, buffer: Uint8Array): Promise<void>;
  /**
   * Optional fast path for servers: fills a prefix of `buffer` with the bytes at `offsetBytes` at once,
   * as far as they are in the host page cache, never waiting for the disk. Returns the bytes filled
   * (0..buffer.length); the caller reads the rest with `read`. A driver offers it only where it can map
   * guest bytes to host bytes without waiting: raw, and qcow2 through L2 tables already in its cache.
   */
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;
  write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void>;
  /** Hint: the range's contents are no longer needed (reads afterwards are zeros or old data). */
  discard(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Makes every acknowledged write durable (metadata included). */
  flush(): Promise<void>;
  /**
   * Extents covering [offsetBytes, offsetBytes+lengthBytes) in order, contiguous, possibly ending early
   * (callers loop). Describes this layer only; see Extent.allocated.
   */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
  info(): Promise<ImageInfo>;

  // Optional abilities: absent means the format can't (the generic layer raises UnsupportedError).

  /**
   * False when a freshly created image does not read as zeros (qemu's bdrv_has_zero_init: a luks payload
   * deciphers to noise), so convert must write the source's zeros too. Absent means it does.
   */
  readonly hasZeroInit?: boolean;
  /** Size of a compressed write unit (the cluster size); present iff writeCompressed is. */
  readonly compressedWriteUnitBytes?: number;
  /** Writes one whole, aligned unit compressed (qemu's bdrv_pwrite_compressed); the last may be short. */
  writeCompressed?(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Changes the guest size; shrinking refuses to cut allocated data unless `allowDataLoss`. */
  resize?(
    sizeBytes: number,
    options: { shrink: boolean; preallocation?: string; allowDataLoss?: boolean },
  ): Promise<void>;
  /**
   * Rewrites the name (and format) of the backing file this image records; `undefined` removes the
   * backing file. Only the reference changes, never data (rebase/commit/amend copy data themselves);
   * the already-open `backing` device stays as it was until the image is reopened.
   */
  setBackingFile?(name: string | undefined, format: string | undefined): Promise<void>;
  /**
   * Deallocates everything this layer stores, so every read falls through to the backing file (qemu's
   * bdrv_make_empty, used by commit). Internal snapshots keep their data.
   */
  makeEmpty?(): Promise<void>;
  /**
   * Changes format options of the image in place (qemu-img amend -o, option names as qemu's). Throws
   * InvalidOptionError for unknown or conflicting options, UnsupportedError for changes the driver can't make.
   */
  amend?(options: Record<string, string>): Promise<void>;
  /** Internal snapshots (qcow2). */
  readonly snapshots?: SnapshotOperations;
  /** Flushes (unless read-only), closes the file(s) and the backing chain. */
  close(): Promise<void>;
}
