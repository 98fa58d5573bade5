/**
 * The cluster key file: the secret every node signs bus messages with (HMAC-SHA256). One key per
 * line, `<key id> <base64 of 32 or more random bytes>`; `#` starts a comment. The FIRST key signs,
 * every key listed verifies, so a key is rotated without stopping the cluster: add the new key
 * below the old one on every node, then move it to the first line on every node, then remove the
 * old line (docs/cluster.md).
 */
import { newKeyFileLine, readKeyFile } from '../util/key-file.ts';
import { ClusterError } from './errors.ts';

export interface ClusterKey {
  id: string;
  key: Buffer;
}

/** Reads and checks the key file. Throws ClusterError ERR_CLUSTER_KEY naming the file and line. */
export function loadClusterKeys(file: string): ClusterKey[] {
  return readKeyFile(file, { what: 'cluster', exact32: false, fail: (message, cause) => new ClusterError('ERR_CLUSTER_KEY', message, cause === undefined ? undefined : { cause }) });
}

/** A new line for a key file: `<id> <base64 of 32 random bytes>`. */
export function newClusterKeyLine(id: string): string {
  return newKeyFileLine(id, (message) => new ClusterError('ERR_CLUSTER_KEY', message));
}
