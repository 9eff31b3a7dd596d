// hostPath(): the VDISK_PATH_MAP contract between the local node and the agents.
import { afterEach, describe, expect, it } from 'vitest';
import { hostPath, mapPath, PATH_MAP_ENV, parsePathMap } from '../../../../src/agent/runtime/paths.ts';

describe('hostPath', () => {
  const saved = process.env[PATH_MAP_ENV];
  afterEach(() => {
    if (saved === undefined) delete process.env[PATH_MAP_ENV];
    else process.env[PATH_MAP_ENV] = saved;
  });

  it('is the identity when VDISK_PATH_MAP is unset (a real pod)', () => {
    delete process.env[PATH_MAP_ENV];
    expect(hostPath('/data/disk.qcow2')).toBe('/data/disk.qcow2');
  });

  it('applies the longest matching prefix, on whole path components only', () => {
    process.env[PATH_MAP_ENV] = JSON.stringify({
      '/data': '/host/pv1',
      '/data/cache/': '/host/cache',
      '/dev/termination-log': '/host/pod/termination-log',
    });
    expect(hostPath('/data/disk.qcow2')).toBe('/host/pv1/disk.qcow2');
    expect(hostPath('/data')).toBe('/host/pv1');
    expect(hostPath('/data/cache/x')).toBe('/host/cache/x');
    expect(hostPath('/database/x')).toBe('/database/x');
    expect(hostPath('/dev/termination-log')).toBe('/host/pod/termination-log');
    expect(hostPath('/dev/nbd0')).toBe('/dev/nbd0');
  });

  it('follows changes of the variable', () => {
    process.env[PATH_MAP_ENV] = JSON.stringify({ '/a': '/x' });
    expect(hostPath('/a/1')).toBe('/x/1');
    process.env[PATH_MAP_ENV] = JSON.stringify({ '/a': '/y' });
    expect(hostPath('/a/1')).toBe('/y/1');
  });

  it('maps the root prefix', () => {
    expect(mapPath(parsePathMap(JSON.stringify({ '/': '/chroot' })), '/etc/x')).toBe('/chroot/etc/x');
  });

  it('rejects a map that is not an object of absolute paths', () => {
    expect(() => parsePathMap('[1]')).toThrow(TypeError);
    expect(() => parsePathMap(JSON.stringify({ relative: '/x' }))).toThrow(TypeError);
    expect(() => parsePathMap(JSON.stringify({ '/a': 1 }))).toThrow(TypeError);
    expect(parsePathMap('')).toEqual([]);
  });
});
