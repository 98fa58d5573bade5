/** Reads the JSON file named by --config (written by bench/lib/brokers.ts). */
export function serverConfig<T>(): T;
/** Prints `READY {...ports}` for the parent, then stops on SIGTERM/SIGINT or when stdin closes. */
export function serve(ports: { tcp: number; tls: number; mtls: number }, stop: () => Promise<void>): void;
/** Starts a Portcullis broker (from src/ or dist/) and serves its tcp, tls and mtls ports. */
export function servePortcullis(broker: { start(): Promise<{ listeners: { name: string; port: number }[] }>; stop(): Promise<void> }): Promise<void>;
