// Portcullis for the benchmark as `npm start` runs it: the compiled dist/ on plain node (no
// TypeScript loader, whose function-naming wrappers cost a few per cent of broker CPU).
// bench/lib/brokers.ts builds dist/ before it starts this. Same configuration and handshake as
// portcullis.ts.
import { serverConfig, servePortcullis } from './args.mjs';

const { createBroker } = await import('../../dist/index.js');
await servePortcullis(createBroker(serverConfig()));
