/**
 * What the broker does with the network connection after a client's DISCONNECT over plain TCP:
 * it closes it (3.1.1 §3.14.4, a SHOULD for the server), fully (a client that keeps its own side
 * open does not keep a half-open socket on the broker), and only after handling what came before
 * the DISCONNECT.
 */
import net from 'node:net';
import test from 'ava';
import { connect, messagesWithin, nextMessages, rawConnectPacket, startBroker } from './helpers.ts';
import { encodeDisconnect, encodePublish } from './raw-mqtt.ts';

/** A raw 3.1.1 client whose own side stays open after the broker's FIN (allowHalfOpen). */
async function halfOpenClient(port: number, clientId: string, will = false) {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const events: string[] = [];
  socket.on('end', () => events.push('end'));
  socket.on('error', (e: NodeJS.ErrnoException) => events.push(`error ${e.code}`));
  socket.on('close', () => events.push('close'));
  const connack = new Promise<Buffer>((resolve) => socket.once('data', resolve));
  let connect = rawConnectPacket(clientId);
  if (will) {
    // Same CONNECT with a will (flag 0x04), topic "will/t", message "gone".
    const id = Buffer.from(clientId);
    const body = Buffer.concat([
      Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x06, 0, 60, 0, id.length]),
      id,
      Buffer.from([0, 6]),
      Buffer.from('will/t'),
      Buffer.from([0, 4]),
      Buffer.from('gone'),
    ]);
    connect = Buffer.concat([Buffer.from([0x10, body.length]), body]);
  }
  socket.write(connect);
  const ack = await connack;
  return { socket, events, ack };
}

function until(events: string[], what: (e: string) => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  return new Promise((resolve) => {
    const tick = () => {
      if (events.some(what)) return resolve(true);
      if (Date.now() > end) return resolve(false);
      setTimeout(tick, 10);
    };
    tick();
  });
}

test('after DISCONNECT over TCP the broker closes the socket fully, even when the client keeps its side open', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const c = await halfOpenClient(b.port, 'half-open');
  t.teardown(() => c.socket.destroy());
  t.is(c.ack.subarray(0, 4).toString('hex'), '20020000');
  c.socket.write(encodeDisconnect(4));
  t.true(await until(c.events, (e) => e === 'end', 2000), 'the broker sent FIN after DISCONNECT');
  // A half-open broker socket would read these bytes and drop them in silence; a closed one
  // answers the first with a reset, so a later write fails and the client's socket closes.
  c.socket.write(Buffer.from([0xc0, 0x00]));
  await new Promise((r) => setTimeout(r, 100));
  c.socket.write(Buffer.from([0xc0, 0x00]));
  t.true(await until(c.events, (e) => e === 'close', 2000), `the client saw the connection reset (${c.events.join(', ')})`);
});

test('publishes written in the same segment as DISCONNECT are all delivered, and the will is discarded', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const sub = await connect(b.port, { clientId: 'sub' });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync({ 'data/#': { qos: 1 }, 'will/t': { qos: 1 } });
  const c = await halfOpenClient(b.port, 'burst', true);
  t.teardown(() => c.socket.destroy());
  const got = nextMessages(sub, 2, 3000);
  c.socket.write(
    Buffer.concat([
      encodePublish({ topic: 'data/a', payload: 'one' }),
      encodePublish({ topic: 'data/b', payload: 'two', qos: 1, packetId: 7 }),
      encodeDisconnect(4),
    ]),
  );
  const messages = await got;
  t.deepEqual(
    messages.map((m) => `${m.topic}=${m.payload}`),
    ['data/a=one', 'data/b=two'],
  );
  t.true(await until(c.events, (e) => e === 'end', 2000));
  t.deepEqual(await messagesWithin(sub, 500), [], 'no will after a normal DISCONNECT');
});
