import fs from 'node:fs';
import path from 'node:path';

/**
 * Creates a directory and its missing parents, one level at a time. Node's
 * `mkdirSync(dir, { recursive: true })` loops forever on some paths (under /proc, for
 * example); this version fails with the first real error instead.
 */
export function ensureDir(dir: string, mode?: number): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) ensureDir(parent);
  fs.mkdirSync(dir, mode === undefined ? undefined : { mode });
}
