/**
 * How the LMDB store's failures reach its callers: every error is a StoreError naming the file,
 * with a stable code (errors.ts).
 */
import fs from 'node:fs';
import { StoreError, StoreWriteError } from './errors.ts';
import { describeKey } from './lmdb-keys.ts';
import type { ScanResult } from './lmdb-scan.ts';
import { RecordError, type TableName } from './records.ts';

/**
 * A rejected write, as the error the caller gets: a damaged record read inside the write, or a
 * failed commit (lmdb-js rejects every write of the batch and hands the cause over in
 * `commitError`).
 */
export async function commitFailure(err: unknown, file: string, dir: string): Promise<never> {
  if (err instanceof StoreError) throw err;
  if (err instanceof RecordError) throw recordFailure(err, file, 'sessions', Buffer.alloc(0));
  let cause: unknown = err;
  const commitError = (err as { commitError?: Promise<unknown> } | null)?.commitError;
  if (commitError !== undefined) {
    try {
      await commitError;
    } catch (e) {
      cause = e;
    }
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  const errno = /MDB_MAP_FULL/.test(message) ? 'MDB_MAP_FULL' : /No space left/i.test(message) ? 'ENOSPC' : /File too large/i.test(message) ? 'EFBIG' : /Input\/output/i.test(message) ? 'EIO' : (cause as { code?: string }).code;
  // LMDB reports a short write as EIO, which is what a full disk usually gives: look at the free space.
  const free = freeBytes(dir);
  const diskFull = errno === 'MDB_MAP_FULL' || errno === 'ENOSPC' || errno === 'EFBIG' || errno === 'EDQUOT' || (errno === 'EIO' && free !== undefined && free < LOW_SPACE_BYTES);
  throw new StoreWriteError(
    `cannot write to ${file}: ${diskFull ? `no space left${free !== undefined ? ` (${free} bytes free)` : ''}` : 'write failed'} (${message}); nothing of this batch was kept`,
    file,
    diskFull,
    errno,
    { cause },
  );
}

/** Below this much free space a failed write is taken for a full disk. */
const LOW_SPACE_BYTES = 1024 * 1024;

function freeBytes(dir: string): number | undefined {
  try {
    const st = fs.statfsSync(dir);
    return st.bavail * st.bsize;
  } catch {
    return undefined;
  }
}

export function fileSize(file: string): number | undefined {
  try {
    return fs.statSync(file).size;
  } catch {
    return undefined;
  }
}

/** A record that cannot be read, as a StoreError naming the file, the table and the key. */
export function recordFailure(err: unknown, file: string, table: TableName, key: Buffer): Error {
  if (err instanceof RecordError) {
    const code = err.problem === 'key' ? 'ERR_STORE_KEY' : 'ERR_STORE_CORRUPT';
    return new StoreError(code, `${file}: ${table} record ${describeKey(table, key)} cannot be read: ${err.message}. Run 'portcullis store check' (docs/persistence.md, "Recovery")`, file, { cause: err });
  }
  return err as Error;
}

/** Refuses to go on with a damaged store: loading only part of it would be silent loss. */
export function throwIfDamaged(scan: ScanResult, file: string): void {
  if (scan.problems.length === 0) return;
  const keyProblem = scan.problems.every((p) => /key file|key id|no store key/.test(p.problem));
  const shown = scan.problems.slice(0, 5).map((p) => `  - ${p.table} ${p.key}: ${p.problem}`);
  const more = scan.problems.length > 5 ? [`  - ... and ${scan.problems.length - 5} more`] : [];
  throw new StoreError(
    keyProblem ? 'ERR_STORE_KEY' : 'ERR_STORE_CORRUPT',
    keyProblem
      ? `${file}: ${scan.problems.length} record(s) cannot be decrypted with the configured keys (store.encryption.keyFile):\n${[...shown, ...more].join('\n')}`
      : `${file} is damaged: ${scan.problems.length} record(s) cannot be read; the broker does not start with part of its state missing. Run 'portcullis store check', then see docs/persistence.md, "Recovery":\n${[...shown, ...more].join('\n')}`,
    file,
  );
}
