// PVC sizing: the engine's measure of a fully allocated image (qemu-img measure is the oracle) plus headroom.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { virtualDiskSpecSchema } from '../../../src/api/virtual-disk.ts';
import { requiredClaimBytes } from '../../../src/controller/sizing.ts';

const MIB = 1024 * 1024;
let hasQemuImg = true;
try {
  execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
} catch {
  hasQemuImg = false;
  console.warn('SKIP sizing-vs-qemu-img: qemu-img is not installed');
}

describe('requiredClaimBytes', () => {
  it('is the raw size for raw, MiB-aligned, plus extra headroom', async () => {
    const spec = virtualDiskSpecSchema.parse({
      size: '10Mi',
      format: 'raw',
      source: { blank: {} },
      storage: { extraHeadroom: '3Mi' },
    });
    expect(await requiredClaimBytes(spec)).toBe(13 * MIB);
  });

  it.skipIf(!hasQemuImg)('covers what qemu-img measure says a fully allocated qcow2 needs', async () => {
    for (const size of ['16Mi', '1Gi', '100Gi']) {
      const spec = virtualDiskSpecSchema.parse({ size, format: 'qcow2', source: { blank: {} } });
      const output = JSON.parse(
        execFileSync(
          'qemu-img',
          ['measure', '--output=json', '-O', 'qcow2', '--size', size.replace('i', '')],
          { encoding: 'utf8' },
        ),
      );
      const bytes = await requiredClaimBytes(spec);
      expect(bytes).toBeGreaterThanOrEqual(output['fully-allocated']);
      expect(bytes % MIB).toBe(0);
    }
  });
});
