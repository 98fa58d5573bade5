/**
 * Store errors: a closed set keyed by `code`, so callers (the broker, the CLI, tests) branch on
 * the code and never on message text. Every message names the file or folder concerned.
 */

export type StoreErrorCode =
  /** Another process (or another Store in this one) holds the store. */
  | 'ERR_STORE_LOCKED'
  /** The store folder or a file in it can be written (or read) by other users, or is not ours. */
  | 'ERR_STORE_PERMISSIONS'
  /** Damaged, truncated, missing or foreign files; the store is not opened. */
  | 'ERR_STORE_CORRUPT'
  /** The encryption key file is missing or malformed, or a record needs a key that is not in it. */
  | 'ERR_STORE_KEY'
  /** A write could not be made durable (disk full, I/O error, file size limit). Nothing of that batch was kept. */
  | 'ERR_STORE_WRITE'
  /** The store is not open. */
  | 'ERR_STORE_CLOSED'
  /** The store's server (Redis) cannot be reached, refused the command, or did not answer in time. */
  | 'ERR_STORE_UNAVAILABLE';

export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    /** The file or folder the error is about. */
    readonly file?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'StoreError';
  }
}

/**
 * A commit failed: every write of that batch was rolled back by LMDB, none of them is on disk.
 * `diskFull` is true when the cause is lack of space (ENOSPC, EFBIG from a file size limit,
 * MDB_MAP_FULL): the writes may succeed again once space is freed.
 */
export class StoreWriteError extends StoreError {
  constructor(
    message: string,
    file: string,
    readonly diskFull: boolean,
    /** The underlying error code when known, e.g. 'ENOSPC', 'EFBIG', 'MDB_MAP_FULL', 'EIO'. */
    readonly errno: string | undefined,
    options?: { cause?: unknown },
  ) {
    super('ERR_STORE_WRITE', message, file, options);
    this.name = 'StoreWriteError';
  }
}

export function isStoreError(err: unknown, code?: StoreErrorCode): err is StoreError {
  return err instanceof StoreError && (code === undefined || err.code === code);
}
