/** Errors of the cluster, with a stable `code` (docs/cluster.md lists them). */
export type ClusterErrorCode =
  | 'ERR_CLUSTER_KEY' // the key file cannot be used
  | 'ERR_CLUSTER_REDIS' // Redis cannot be reached or refused us
  | 'ERR_CLUSTER_NODE'; // this node id is in use by a live process

export class ClusterError extends Error {
  constructor(
    readonly code: ClusterErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
