// Kubernetes resource quantities (`10Gi`, `512M`, `1.5e9`) as bytes: the spelling of VirtualDisk
// `spec.size` and PVC requests. Grammar from apimachinery's resource.Quantity (api-conventions,
// "Quantity"): binary suffixes Ki..Ei, decimal k..E, milli `m`, decimal exponents `e`/`E`.

/** Pattern the CRD schema enforces for a byte quantity (no negatives, no milli: bytes are whole). */
export const QUANTITY_PATTERN = '^[0-9]+(\\.[0-9]+)?(([KMGTPE]i)|[kMGTPE]|[eE][0-9]+)?$';

const SUFFIX_FACTOR: Record<string, number> = {
  '': 1,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
};

/**
 * Bytes of a quantity string, rounded up to a whole byte (as PVC capacities are).
 * Returns undefined for text that is not a non-negative quantity or exceeds 2^53 bytes.
 */
export function parseQuantityBytes(text: string): number | undefined {
  const match = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|[eE]([0-9]{1,3}))?$/.exec(text.trim());
  if (!match) return undefined;
  const [, digits = '0', suffix = '', exponent] = match;
  const factor = exponent === undefined ? SUFFIX_FACTOR[suffix] : 10 ** Number(exponent);
  if (factor === undefined) return undefined;
  const bytes = Math.ceil(Number(digits) * factor);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** Like parseQuantityBytes, but throws a TypeError naming `field` (used after schema validation). */
export function quantityBytes(text: string, field: string): number {
  const bytes = parseQuantityBytes(text);
  if (bytes === undefined) throw new TypeError(`${field}: '${text}' is not a byte quantity such as 10Gi`);
  return bytes;
}

/** The shortest exact binary-suffixed quantity for `bytes` (`10Gi`, `1536Mi`, `1000`). */
export function formatQuantityBytes(bytes: number): string {
  const suffixes = ['Ei', 'Pi', 'Ti', 'Gi', 'Mi', 'Ki'] as const;
  for (const suffix of suffixes) {
    const factor = SUFFIX_FACTOR[suffix] ?? 1;
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${suffix}`;
  }
  return String(bytes);
}
