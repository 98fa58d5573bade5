/**
 * Read fairness, over a real loopback socket against a real broker: a client that floods QoS 0
 * publishes does not hold the event loop. Node reads a busy socket up to 32 times in a row
 * (64 KiB each, about 2 MiB) before timers, immediates or other sockets get a turn; the broker
 * stops reading a connection once it has read its budget (64 KiB) in a turn and reads it again
 * in the next one.
 *
 * The broker runs in this process, so the test can count event-loop turns itself: a setImmediate
 * chain runs once per turn, and an audit sink (allowed publishes are audited, synchronously, as
 * each publish is handled) counts the publishes. The assertion is on the largest number of
 * publish bytes handled between two turns, not on a time, so a loaded machine does not change
 * the outcome: with the budget it stays near 64-128 KiB; without it the broker handles up to
 * 2 MiB of the flood in a single turn.
 */
import test from 'ava';
import mqttPacket from 'mqtt-packet';
import type { AuditEvent, AuditSink } from '../src/audit/types.ts';
import { rawConnected, startBroker } from './helpers.ts';

const FLOOD_BYTES = 4 * 1024 * 1024;
/** Four times what one turn can read with the budget, a quarter of what it reads without. */
const MAX_BYTES_PER_TURN = 512 * 1024;

test('a client flooding QoS 0 publishes gets at most a few 64 KiB read budgets per event-loop turn, not 2 MiB', async (t) => {
  t.timeout(10_000);
  let handled = 0;
  const sink: AuditSink = {
    record(event: AuditEvent) {
      if (event.event === 'publish' && event.decision === 'allow') handled++;
    },
    flush: async () => {},
    close: async () => {},
  };
  const tb = await startBroker({ audit: { allowed: { publish: true } } }, { audit: sink });
  t.teardown(() => tb.stop());

  const socket = await rawConnected(tb.port, 'flooder');
  t.teardown(() => socket.destroy());

  const one = mqttPacket.generate({ cmd: 'publish', topic: 'flood/t', payload: Buffer.alloc(100, 0x61), qos: 0, retain: false, dup: false });
  const count = Math.ceil(FLOOD_BYTES / one.length);
  const flood = Buffer.concat(Array.from({ length: count }, () => one));

  // One tick per event-loop turn (check phase): how many publishes were handled since the last one.
  let running = true;
  let seen = 0;
  let turns = 0;
  let mostInOneTurn = 0;
  const tick = () => {
    const inTurn = handled - seen;
    seen = handled;
    if (inTurn > 0) turns++;
    if (inTurn > mostInOneTurn) mostInOneTurn = inTurn;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  t.teardown(() => {
    running = false;
  });

  socket.write(flood);
  const deadline = Date.now() + 8000;
  while (handled < count && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  // One more turn, so the tick counts the publishes handled in the last one.
  await new Promise((resolve) => setImmediate(resolve));
  running = false;

  t.is(handled, count, 'every publish of the flood was handled');
  const mostBytes = mostInOneTurn * one.length;
  t.log(`${count} publishes (${FLOOD_BYTES / 1024} KiB) handled over ${turns} turns; most in one turn: ${mostInOneTurn} (${Math.round(mostBytes / 1024)} KiB)`);
  t.true(
    mostBytes <= MAX_BYTES_PER_TURN,
    `${Math.round(mostBytes / 1024)} KiB of publishes handled in one event-loop turn (at most ${MAX_BYTES_PER_TURN / 1024} KiB expected)`,
  );
});
