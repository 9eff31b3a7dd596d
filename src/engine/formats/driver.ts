// The contract between the generic engine and one format: a FormatDriver record, as QEMU's BlockDriver
// table is. A missing callback means "not supported"; the generic layer says so with UnsupportedError.
// Capabilities are data so docs/formats.md and the CLI's help are generated from the registry.

import type { BlockDevice } from '../block-device.ts';
import type { ByteSink, ByteSource } from '../io/byte-stream.ts';
import type { HostFile } from '../io/host-file.ts';

export interface FormatCapabilities {
  create: boolean;
  write: boolean;
  backing: boolean;
  internalSnapshots: boolean;
  check: boolean;
  compression: readonly string[];
  encryption: readonly string[];
  resize: 'none' | 'grow' | 'grow-shrink';
  /**
   * The device takes overlapping requests, writes included (reads, writes, zero writes and discards in
   * flight together; flush still waits for them): its own locking keeps metadata consistent. False: a
   * caller issuing requests concurrently (the NBD server) runs one mutating request at a time.
   */
  concurrentWrites: boolean;
}

/** One `-o name=value` option a driver accepts, as qemu-img's QemuOptsList entries are. */
export interface CreateOptionSpec {
  name: string;
  type: 'size' | 'number' | 'bool' | 'string' | 'enum';
  help: string;
  values?: readonly string[];
  default?: string | number | boolean;
}

/**
 * Opens (or with `create`, creates empty) an external data file an image names: resolved against the
 * image's folder, refused outside it unless escapes are allowed (open.ts openDataFileFor).
 */
export type OpenDataFileFn = (reference: string, options: { create?: boolean }) => Promise<HostFile>;

/** Opens another image by name for a backing chain: resolution, escape checks and loops live in open.ts. */
export type OpenBackingFn = (reference: string, format: string | undefined) => Promise<BlockDevice>;

export interface OpenContext {
  /** Path as the user or the parent image named it (for messages and relative backing names). */
  path: string;
  file: HostFile;
  readOnly: boolean;
  /** Open the named backing file; undefined when the caller asked for no backing (qemu's -U/backing=null). */
  openBacking: OpenBackingFn | undefined;
  /** Format options from --image-opts / -o style settings (e.g. key-secret); driver-specific. */
  options: Record<string, string>;
  /** Metadata only (qemu's BDRV_O_NO_IO): an encrypted image opens without its key (see OpenImageOptions). */
  metadataOnly?: boolean;
  /** Opens the image's external data file (qcow2 data_file); absent where the caller gives none. */
  openDataFile?: OpenDataFileFn;
}

export interface CreateContext {
  path: string;
  /** Already created (empty) file, opened read-write. The driver writes headers and sizes it. */
  file: HostFile;
  sizeBytes: number;
  /** Parsed `-o` options, keys in qemu spelling (cluster_size, compat, ...), values as strings. */
  options: Record<string, string>;
  backingFile?: string;
  backingFormat?: string;
  /** Opens the backing file to learn its size when `sizeBytes` was not given. */
  openBacking: OpenBackingFn | undefined;
  /** Creates the external data file an option names (qcow2 data_file). */
  openDataFile?: OpenDataFileFn;
}

/** One problem `check` found, as zod issues are: codes, not wording; the CLI renders qemu-img's text. */
export interface CheckIssue {
  code: 'leak' | 'corruption' | 'check-error';
  message: string;
  offsetBytes?: number;
  lengthBytes?: number;
  fixable: boolean;
}

export interface CheckReport {
  issues: CheckIssue[];
  leaks: number;
  corruptions: number;
  checkErrors: number;
  leaksFixed: number;
  corruptionsFixed: number;
  /** qemu's "image-end-offset" */
  imageEndOffsetBytes?: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
}

/** qemu-img measure's answer, in bytes. */
export interface MeasureResult {
  requiredBytes: number;
  fullyAllocatedBytes: number;
  bitmapsBytes?: number;
}

export interface MeasureInput {
  /** Guest size of the image to be made. */
  sizeBytes: number;
  /** The image that would be converted (its allocation decides `requiredBytes`); absent with --size. */
  source?: BlockDevice;
  /** Parsed `-o` options for the target. */
  options: Record<string, string>;
}

export type RepairMode = 'none' | 'leaks' | 'all';

/** What a streaming writer is asked for (`vdisk convert -O fmt in -`). */
export interface StreamWriteRequest {
  /** Parsed `-o` options for the image written, keys in qemu spelling. */
  options: Record<string, string>;
  /** `-S`: 0 keeps every allocated cluster; otherwise all-zero clusters are left out. */
  minSparseBytes: number;
  /** Called with (doneBytes, totalBytes) as guest data is emitted. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface StreamWriteResult {
  /** Bytes written to the sink (the image file's length). */
  imageBytes: number;
  /** Guest bytes stored as data (zero and unallocated ranges excluded). */
  dataBytes: number;
}

export interface StreamCopyOptions {
  /** A file the reader may create (and must delete) for parts that arrive before the metadata naming them. */
  spillPath: string;
  onProgress?: (doneBytes: number) => void;
}

export interface StreamCopyResult {
  /** Guest size of the streamed image (the target is resized to it when the format could not say upfront). */
  sizeBytes: number;
  /** Bytes that had to go through the spill file (0 when the stream was in metadata-first order). */
  spilledBytes: number;
}

/** An image of some format arriving on a forward-only stream (stdin), its header already read. */
export interface StreamedImage {
  /** Guest size when the stream's header says; undefined for raw (known only at the end of the stream). */
  sizeBytes: number | undefined;
  /** Writes the guest contents into `target`, a fresh device that reads as zeros (grown if needed). */
  copyInto(target: BlockDevice, options: StreamCopyOptions): Promise<StreamCopyResult>;
}

export interface FormatDriver {
  /** qemu's name for the format (`qcow2`, `vpc`, `vmdk`, ...). */
  name: string;
  description: string;
  /** 0-100 from the first bytes of the file (at least 512 when the file has them) and its name; never throws. */
  probe(head: Uint8Array, fileName: string): number;
  capabilities: FormatCapabilities;
  createOptions: readonly CreateOptionSpec[];
  open(context: OpenContext): Promise<BlockDevice>;
  create?(context: CreateContext): Promise<void>;
  /** Host bytes an image of this format needs for `input` (qemu-img measure). */
  measure?(input: MeasureInput): Promise<MeasureResult>;
  /** Checks (and with `repair` mends) the metadata of a file of this format. */
  check?(context: OpenContext, repair: RepairMode): Promise<CheckReport>;
  /** Writes an image of this format holding `source` to a forward-only sink (a pipe), in file order. */
  writeStream?(source: BlockDevice, sink: ByteSink, request: StreamWriteRequest): Promise<StreamWriteResult>;
  /** Starts reading an image of this format from a forward-only stream (reads its header). */
  readStream?(input: ByteSource): Promise<StreamedImage>;
}
