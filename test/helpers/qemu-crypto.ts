// Running qemu-img / qemu-io on encrypted images: the `--object secret` and `--image-opts` spellings,
// and a retry for qemu's PBKDF2 calibration, which fails now and then on this machine's coarse
// thread CPU clock ("Unable to get accurate CPU usage") before it has made anything.

import { runStatus } from './format-harness.ts';

/** `--object secret,id=ID,data=PASSPHRASE` (the passphrase must not hold a comma). */
export function secretObject(passphrase: string, id = 'sec0'): string[] {
  return ['--object', `secret,id=${id},data=${passphrase}`];
}

/** An `--image-opts` operand for a qcow2 (or luks) image opened with secret `id`. */
export function imageOpts(path: string, format: 'qcow2' | 'luks' | 'qcow', id = 'sec0'): string {
  const key = format === 'luks' ? 'key-secret' : 'encrypt.key-secret';
  return `driver=${format},file.filename=${path},${key}=${id}`;
}

/**
 * Runs a qemu tool, retrying (up to 20 times) only qemu's spurious PBKDF2 timing failure; throws on
 * failure. The calibration's first round is ~10 ms of CPU, the thread clock ticks in 4-10 ms steps,
 * and a round read as 0 ms fails the command: under load five tries in a row failed.
 */
export function qemuRun(command: string, args: string[]): string {
  for (let attempt = 1; ; attempt++) {
    const result = runStatus(command, args);
    if (result.status === 0) return result.stdout;
    if (!result.stderr.includes('Unable to get accurate CPU usage') || attempt >= 20)
      throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  }
}
