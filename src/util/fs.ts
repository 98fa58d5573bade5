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
  try {
    fs.mkdirSync(dir, mode === undefined ? undefined : { mode });
  } catch (err) {
    // Another process (the CLI and the broker) may create it at the same moment.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

/**
 * Writes through a temporary file and a rename, so a reader (a broker watching the file) never
 * sees half a file. Missing directories are created; one named `private` gets mode 0700.
 */
export function writeAtomic(file: string, data: string, mode: number): void {
  const dir = path.dirname(file);
  ensureDir(dir, path.basename(dir) === 'private' ? 0o700 : undefined);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}
