// formatFixed against C's printf("%.2f"): the expected strings are what glibc prints for these
// doubles (their exact binary value, ties to even), e.g. qemu-img check's percentages.

import { describe, expect, it } from 'vitest';
import { formatFixed } from '../../../src/cli/c-format.ts';

describe('formatFixed', () => {
  it('rounds exact ties to even and inexact values by their binary value', () => {
    expect(formatFixed(3.125, 2)).toBe('3.12');
    expect(formatFixed(0.375, 2)).toBe('0.38');
    expect(formatFixed(2.675, 2)).toBe('2.67');
    expect(formatFixed(1.005, 2)).toBe('1.00');
    expect(formatFixed(100, 2)).toBe('100.00');
    expect(formatFixed(0, 2)).toBe('0.00');
    expect(formatFixed(1e21, 0)).toBe('1000000000000000000000');
    expect(formatFixed(-0.5, 0)).toBe('-0');
  });

  it('matches 3/96 as qemu-img check prints it', () => {
    expect(formatFixed((3 * 100) / 96, 2)).toBe('3.12');
  });
});
