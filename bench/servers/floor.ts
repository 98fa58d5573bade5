/**
 * The floor for connect rates on Node (npm run bench:floor): a bare `net` server that frames MQTT
 * packets, answers CONNECT with CONNACK (accepted) and closes the socket on DISCONNECT. No
 * authentication, sessions, admission, audit or protocol checks. Whatever a broker built on
 * Node's `net` module does per connect comes on top of this.
 */
import net from 'node:net';
import { serve, serverConfig } from './args.mjs';

const config = serverConfig<{ host: string }>();
const CONNACK = Buffer.from([0x20, 0x02, 0x00, 0x00]);
const CONNECT = 1;
const DISCONNECT = 14;

/** Where the packet starting at `at` ends, or -1 when `buf` does not hold all of it yet. */
function packetEnd(buf: Buffer, at: number): number {
  let length = 0;
  let shift = 0;
  for (let i = at + 1; i < buf.length && i < at + 5; i++) {
    const b = buf[i]!;
    length |= (b & 0x7f) << shift;
    if ((b & 0x80) === 0) return i + 1 + length <= buf.length ? i + 1 + length : -1;
    shift += 7;
  }
  return -1;
}

const server = net.createServer({ noDelay: true }, (socket) => {
  let pending: Buffer | null = null;
  socket.on('data', (chunk: Buffer) => {
    const buf = pending === null ? chunk : Buffer.concat([pending, chunk]);
    pending = null;
    let at = 0;
    while (at < buf.length) {
      const end = packetEnd(buf, at);
      if (end < 0) {
        pending = buf.subarray(at);
        return;
      }
      const type = buf[at]! >> 4;
      if (type === CONNECT) socket.write(CONNACK);
      else if (type === DISCONNECT) {
        socket.destroy();
        return;
      }
      at = end;
    }
  });
  socket.on('error', () => {});
});

server.listen(0, config.host, () => {
  const { port } = server.address() as net.AddressInfo;
  serve({ tcp: port, tls: 0, mtls: 0 }, () => new Promise<void>((resolve) => server.close(() => resolve())));
});
