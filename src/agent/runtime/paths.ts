// Container path -> host path mapping for agents run as local processes by the test/dev local node
// (test/controlplane/local-node.ts). In a real pod VDISK_PATH_MAP is unset and paths are used as-is.
// Contract: VDISK_PATH_MAP is a JSON object {containerMountPath: hostFolder}; the longest matching prefix wins.

/** Name of the environment variable holding the JSON path map. */
export const PATH_MAP_ENV = 'VDISK_PATH_MAP';

type PathMap = ReadonlyArray<readonly [containerPrefix: string, hostFolder: string]>;

let cachedSource: string | undefined;
let cachedMap: PathMap = [];

function trimTrailingSlash(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.replace(/\/+$/, '') || '/' : path;
}

/**
 * Parses a VDISK_PATH_MAP value into prefix pairs, longest container prefix first.
 * Throws a TypeError when the value is not a JSON object of absolute paths to strings.
 */
export function parsePathMap(json: string | undefined): PathMap {
  if (json === undefined || json.trim() === '') return [];
  const parsed: unknown = JSON.parse(json);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new TypeError(`${PATH_MAP_ENV} must be a JSON object {containerPath: hostPath}`);
  }
  const pairs: Array<[string, string]> = [];
  for (const [containerPath, hostFolder] of Object.entries(parsed)) {
    if (typeof hostFolder !== 'string' || !containerPath.startsWith('/')) {
      throw new TypeError(
        `${PATH_MAP_ENV}: entry ${JSON.stringify(containerPath)} must map an absolute path to a string`,
      );
    }
    pairs.push([trimTrailingSlash(containerPath), trimTrailingSlash(hostFolder)]);
  }
  return pairs.sort((a, b) => b[0].length - a[0].length);
}

/** Applies a parsed map: the longest prefix that matches whole path components is replaced. */
export function mapPath(map: PathMap, containerPath: string): string {
  for (const [prefix, hostFolder] of map) {
    if (containerPath === prefix) return hostFolder;
    const withSlash = prefix === '/' ? '/' : `${prefix}/`;
    if (containerPath.startsWith(withSlash)) {
      const rest = containerPath.slice(withSlash.length);
      return hostFolder === '/' ? `/${rest}` : `${hostFolder}/${rest}`;
    }
  }
  return containerPath;
}

/**
 * Returns where a path as seen inside the container lives on this host.
 * Identity when VDISK_PATH_MAP is unset (a real pod); agents call this for every path they touch.
 */
export function hostPath(containerPath: string): string {
  const source = process.env[PATH_MAP_ENV];
  if (source !== cachedSource) {
    cachedMap = parsePathMap(source);
    cachedSource = source;
  }
  return mapPath(cachedMap, containerPath);
}
