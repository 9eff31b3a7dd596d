// node:crypto, loaded on first use: the random ids of new images and the LUKS/AES code call through
// here instead of importing it. Loading node:crypto costs ~9 ms of every CLI start-up, and opening,
// checking or converting an unencrypted image never needs it.

type Crypto = typeof import('node:crypto');

function crypto(): Crypto {
  return process.getBuiltinModule('node:crypto');
}

/** `name` of node:crypto, resolved at each call (the module loads at the first). */
function lazy<Name extends keyof Crypto>(name: Name): Crypto[Name] {
  return ((...args: unknown[]) =>
    (crypto()[name] as (...forwarded: unknown[]) => unknown)(...args)) as Crypto[Name];
}

export const randomUUID = lazy('randomUUID');
export const randomBytes = lazy('randomBytes');
export const randomInt = lazy('randomInt');
export const createHash = lazy('createHash');
export const createCipheriv = lazy('createCipheriv');
export const createDecipheriv = lazy('createDecipheriv');
export const createSecretKey = lazy('createSecretKey');
export const pbkdf2 = lazy('pbkdf2');
export const pbkdf2Sync = lazy('pbkdf2Sync');
export const timingSafeEqual = lazy('timingSafeEqual');
