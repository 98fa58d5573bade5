/** Aedes (in-memory persistence, default options) on one TCP listener, for the benchmark. */
import net from 'node:net';
import { Aedes } from 'aedes';
import { serve, serverArgs } from './args.ts';

const { host, port } = serverArgs();
const aedes = await Aedes.createBroker();
const server = net.createServer(aedes.handle);
await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, () => resolve());
});
serve((server.address() as net.AddressInfo).port, async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await new Promise<void>((resolve) => aedes.close(() => resolve()));
});
