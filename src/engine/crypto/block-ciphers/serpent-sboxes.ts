// Serpent's eight S-boxes and their inverses in bitslice form: straight-line AND/XOR/NOT over the four
// state words, one bit column per S-box input. Each output bit is the algebraic normal form (XOR of
// AND-monomials) of the Appendix A.5 table, derived by a Moebius transform; the unit test checks every
// input nibble of every box against the tables in serpent.ts.

/**
 * Applies S-box `index` (0..7; 8..15 are the inverses of 0..7) to words x0..x3 (bit i of the input
 * nibble is in word xi) and writes the output words to `out`.
 */
export function serpentSbox(
  index: number,
  x0: number,
  x1: number,
  x2: number,
  x3: number,
  out: Int32Array,
): void {
  switch (index) {
    case 0: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x012 = x01 & x2;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x01 ^ x2 ^ x02 ^ x12 ^ x012 ^ x3 ^ x023 ^ x123);
      out[1] = ~(x0 ^ x02 ^ x12 ^ x012 ^ x13 ^ x023 ^ x123);
      out[2] = x1 ^ x01 ^ x02 ^ x012 ^ x3 ^ x13 ^ x123;
      out[3] = x0 ^ x1 ^ x2 ^ x3 ^ x03;
      return;
    }
    case 1: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x1 ^ x12 ^ x03 ^ x23 ^ x023 ^ x123);
      out[1] = ~(x0 ^ x01 ^ x2 ^ x02 ^ x3 ^ x13 ^ x013 ^ x023 ^ x123);
      out[2] = ~(x1 ^ x01 ^ x2 ^ x3);
      out[3] = ~(x1 ^ x02 ^ x3 ^ x03 ^ x013 ^ x023 ^ x123);
      return;
    }
    case 2: {
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x0 & x1 & x2;
      const x013 = x0 & x1 & x3;
      const x023 = x02 & x3;
      out[0] = x1 ^ x2 ^ x02 ^ x3;
      out[1] = x0 ^ x1 ^ x2 ^ x12 ^ x012 ^ x03 ^ x013 ^ x23 ^ x023;
      out[2] = x0 ^ x1 ^ x12 ^ x3 ^ x13 ^ x013 ^ x23 ^ x023;
      out[3] = ~(x0 ^ x1 ^ x2 ^ x012 ^ x13);
      return;
    }
    case 3: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = x0 ^ x1 ^ x12 ^ x3 ^ x03 ^ x23 ^ x023 ^ x123;
      out[1] = x0 ^ x1 ^ x02 ^ x03 ^ x013 ^ x23 ^ x023;
      out[2] = x0 ^ x01 ^ x2 ^ x012 ^ x3 ^ x13 ^ x013;
      out[3] = x0 ^ x1 ^ x01 ^ x2 ^ x02 ^ x012 ^ x3 ^ x23 ^ x023;
      return;
    }
    case 4: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x1 ^ x01 ^ x2 ^ x3 ^ x03 ^ x13);
      out[1] = x0 ^ x02 ^ x12 ^ x3 ^ x13 ^ x23 ^ x023 ^ x123;
      out[2] = x0 ^ x01 ^ x2 ^ x12 ^ x012 ^ x13 ^ x013 ^ x23 ^ x123;
      out[3] = x0 ^ x1 ^ x2 ^ x12 ^ x03 ^ x13 ^ x013;
      return;
    }
    case 5: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x1 & x2 & x3;
      out[0] = ~(x1 ^ x01 ^ x2 ^ x3 ^ x03 ^ x13);
      out[1] = ~(x0 ^ x01 ^ x2 ^ x3 ^ x13 ^ x013 ^ x23);
      out[2] = ~(x1 ^ x02 ^ x3 ^ x013 ^ x23 ^ x023 ^ x123);
      out[3] = ~(x0 ^ x1 ^ x2 ^ x012 ^ x3 ^ x03 ^ x023);
      return;
    }
    case 6: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x1 ^ x2 ^ x02 ^ x12 ^ x012 ^ x3 ^ x013 ^ x123);
      out[1] = ~(x1 ^ x2 ^ x03);
      out[2] = ~(x0 ^ x01 ^ x2 ^ x12 ^ x012 ^ x13 ^ x013 ^ x23 ^ x123);
      out[3] = x1 ^ x01 ^ x2 ^ x02 ^ x012 ^ x3 ^ x23 ^ x123;
      return;
    }
    case 7: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x01 ^ x2 ^ x03 ^ x13 ^ x23 ^ x023 ^ x123);
      out[1] = x1 ^ x01 ^ x2 ^ x02 ^ x12 ^ x3 ^ x03 ^ x013 ^ x023;
      out[2] = x0 ^ x1 ^ x2 ^ x012 ^ x3 ^ x03 ^ x13 ^ x013 ^ x123;
      out[3] = x0 ^ x1 ^ x2 ^ x02 ^ x012 ^ x03;
      return;
    }
    case 8: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x01 ^ x2 ^ x12 ^ x03 ^ x13 ^ x013 ^ x23 ^ x023 ^ x123);
      out[1] = x0 ^ x1 ^ x2 ^ x02 ^ x13 ^ x023 ^ x123;
      out[2] = ~(x0 ^ x1 ^ x01 ^ x2 ^ x3);
      out[3] = ~(x0 ^ x12 ^ x3 ^ x013 ^ x23 ^ x023 ^ x123);
      return;
    }
    case 9: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x012 = x01 & x2;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x1 ^ x01 ^ x012 ^ x13 ^ x023 ^ x123);
      out[1] = x1 ^ x2 ^ x012 ^ x3 ^ x03 ^ x13 ^ x023 ^ x123;
      out[2] = ~(x0 ^ x1 ^ x02 ^ x12 ^ x012 ^ x3 ^ x023);
      out[3] = x0 ^ x2 ^ x3 ^ x13;
      return;
    }
    case 10: {
      const x01 = x0 & x1;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x0 & x2 & x3;
      out[0] = x0 ^ x1 ^ x2 ^ x12 ^ x13;
      out[1] = x1 ^ x01 ^ x2 ^ x03 ^ x013 ^ x23 ^ x023;
      out[2] = ~(x0 ^ x01 ^ x2 ^ x3 ^ x03 ^ x13 ^ x013 ^ x023);
      out[3] = ~(x01 ^ x12 ^ x012 ^ x3 ^ x023);
      return;
    }
    case 11: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = x0 ^ x2 ^ x12 ^ x3 ^ x03 ^ x13 ^ x123;
      out[1] = x1 ^ x2 ^ x12 ^ x012 ^ x3 ^ x03 ^ x023 ^ x123;
      out[2] = x01 ^ x02 ^ x12 ^ x03 ^ x13 ^ x013 ^ x23 ^ x023;
      out[3] = x0 ^ x1 ^ x2 ^ x02 ^ x012 ^ x03 ^ x013 ^ x23;
      return;
    }
    case 12: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      out[0] = ~(x0 ^ x1 ^ x2 ^ x3 ^ x03 ^ x013 ^ x23 ^ x023);
      out[1] = x01 ^ x2 ^ x02 ^ x3 ^ x03 ^ x023;
      out[2] = ~(x0 ^ x1 ^ x01 ^ x2 ^ x02 ^ x012 ^ x3 ^ x13 ^ x013);
      out[3] = x1 ^ x01 ^ x2 ^ x03 ^ x013 ^ x23;
      return;
    }
    case 13: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      out[0] = x0 ^ x12 ^ x3 ^ x013;
      out[1] = x0 ^ x1 ^ x02 ^ x12 ^ x012 ^ x3 ^ x03 ^ x013;
      out[2] = x0 ^ x01 ^ x2 ^ x13 ^ x013 ^ x023;
      out[3] = ~(x1 ^ x01 ^ x2 ^ x012 ^ x03);
      return;
    }
    case 14: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x01 ^ x02 ^ x12 ^ x012 ^ x3 ^ x013 ^ x123);
      out[1] = ~(x1 ^ x2 ^ x02 ^ x3);
      out[2] = ~(x0 ^ x1 ^ x12 ^ x13 ^ x013 ^ x23 ^ x123);
      out[3] = ~(x1 ^ x01 ^ x2 ^ x12 ^ x012 ^ x3 ^ x03 ^ x013 ^ x23 ^ x123);
      return;
    }
    case 15: {
      const x01 = x0 & x1;
      const x02 = x0 & x2;
      const x12 = x1 & x2;
      const x03 = x0 & x3;
      const x13 = x1 & x3;
      const x23 = x2 & x3;
      const x012 = x01 & x2;
      const x013 = x01 & x3;
      const x023 = x02 & x3;
      const x123 = x12 & x3;
      out[0] = ~(x0 ^ x1 ^ x12 ^ x13 ^ x013 ^ x23 ^ x123);
      out[1] = ~(x0 ^ x2 ^ x12 ^ x3 ^ x03 ^ x13 ^ x023 ^ x123);
      out[2] = x1 ^ x02 ^ x3 ^ x013 ^ x23 ^ x023;
      out[3] = x01 ^ x2 ^ x012 ^ x03 ^ x13 ^ x013;
      return;
    }
    default:
      throw new RangeError(`no Serpent S-box ${index}`);
  }
}
