/**
 * The cluster key file: the secret every node signs bus messages with (HMAC-SHA256). One key per
 * line, `<key id> <base64 of 32 or more random bytes>`; `#` starts a comment. The FIRST key signs,
 * every key listed verifies, so a key is rotated without stopping the cluster: add the new key
 * below the old one on every node, then move it to the first line on every node, then remove the
 * old line (docs/cluster.md).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { ClusterError } from './errors.ts';

export interface ClusterKey {
  id: string;
  key: Buffer;
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** Reads and checks the key file. Throws ClusterError ERR_CLUSTER_KEY naming the file and line. */
export function loadClusterKeys(file: string): ClusterKey[] {
  let stat: fs.Stats;
  let text: string;
  try {
    stat = fs.statSync(file);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ClusterError('ERR_CLUSTER_KEY', `cannot read the cluster key file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  // A key others can read is no longer a secret: anyone who has it can inject messages.
  if (process.platform !== 'win32' && (stat.mode & 0o077) !== 0) {
    throw new ClusterError('ERR_CLUSTER_KEY', `the cluster key file ${file} can be read or written by other users (mode ${(stat.mode & 0o777).toString(8)}); chmod 600 it`);
  }
  const keys: ClusterKey[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') return;
    const where = `${file}:${i + 1}`;
    const parts = line.split(/\s+/);
    if (parts.length !== 2) throw new ClusterError('ERR_CLUSTER_KEY', `${where}: expected '<key id> <base64 key>'`);
    const [id, b64] = parts as [string, string];
    if (!KEY_ID.test(id)) throw new ClusterError('ERR_CLUSTER_KEY', `${where}: a key id is 1 to 64 of A-Z a-z 0-9 . _ -`);
    if (seen.has(id)) throw new ClusterError('ERR_CLUSTER_KEY', `${where}: key id '${id}' appears twice`);
    const key = Buffer.from(b64, 'base64');
    if (key.length < 32 || key.toString('base64').replace(/=+$/, '') !== b64.replace(/=+$/, '')) {
      throw new ClusterError('ERR_CLUSTER_KEY', `${where}: the key must be at least 32 random bytes in base64 (openssl rand -base64 32)`);
    }
    seen.add(id);
    keys.push({ id, key });
  });
  if (keys.length === 0) throw new ClusterError('ERR_CLUSTER_KEY', `the cluster key file ${file} holds no key`);
  return keys;
}

/** A new line for a key file: `<id> <base64 of 32 random bytes>`. */
export function newClusterKeyLine(id: string): string {
  if (!KEY_ID.test(id)) throw new ClusterError('ERR_CLUSTER_KEY', 'a key id is 1 to 64 of A-Z a-z 0-9 . _ -');
  return `${id} ${randomBytes(32).toString('base64')}`;
}
