/**
 * Portcullis for the benchmark from src/ (through the TypeScript loader), from the configuration
 * bench/lib/brokers.ts wrote (plain TCP, TLS and mTLS listeners; security off or on). The
 * benchmarks run portcullis-dist.mjs (the compiled dist/, as `npm start` does) unless
 * BENCH_PORTCULLIS_FROM=src.
 */
import { createBroker } from '../../src/index.ts';
import { serverConfig, servePortcullis } from './args.mjs';

await servePortcullis(createBroker(serverConfig<Parameters<typeof createBroker>[0]>()));
