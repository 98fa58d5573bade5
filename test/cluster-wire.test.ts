/**
 * A publish crosses the bus as a body the frame writes straight from the message (src/cluster/
 * wire.ts PublishWire, frame.ts): what the receiving node decodes from a signed frame is the
 * message that was sent, field for field (topic in any script, payload, QoS, retain, expiry,
 * origin, a stamp of the sender or of another node, v5 properties with buffers), beside bodies
 * given as buffers, in any order and number. Property test (fast-check), seeded; set WIRE_SEED to
 * replay a failure.
 */
import test from 'ava';
import fc from 'fast-check';
import type { Message } from '../src/broker/message.ts';
import { decodeFrame, encodeFrame, type Body } from '../src/cluster/frame.ts';
import { BodyKind, decodeBody, encodeControl, publishHeader, PublishWire } from '../src/cluster/wire.ts';

const SEED = Number(process.env.WIRE_SEED ?? 20261207);
const KEY = { id: 'k1', key: Buffer.alloc(32, 7) };
const SENDER = 'node-a~abc123';

const message: fc.Arbitrary<Message> = fc
  .record({
    topic: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }),
    payload: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    retain: fc.boolean(),
    expiresAt: fc.option(fc.integer({ min: 0, max: 2 ** 45 }), { nil: undefined }),
    origin: fc.option(fc.string({ unit: 'grapheme', maxLength: 30 }), { nil: undefined }),
    stamp: fc.option(fc.record({ node: fc.oneof(fc.constant(SENDER), fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 60 })), seq: fc.nat() }), { nil: undefined }),
    properties: fc.option(
      fc.record({ contentType: fc.string({ maxLength: 10 }), correlationData: fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)), userProperties: fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 })) }),
      { nil: undefined },
    ),
  })
  .map((m) => {
    const out: Message = { topic: m.topic, payload: m.payload, qos: m.qos, retain: m.retain };
    if (m.expiresAt !== undefined) out.expiresAt = m.expiresAt;
    if (m.origin !== undefined) out.origin = m.origin;
    if (m.stamp !== undefined) out.stamp = m.stamp;
    if (m.properties !== undefined) out.properties = m.properties as Message['properties'];
    return out;
  });

const groups = fc.option(fc.array(fc.constantFrom('$share/g/a', '$share/h/#'), { minLength: 1, maxLength: 2 }), { nil: null });

test('a publish written straight into a signed frame decodes, on the receiving node, to the message that was sent', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(message, fc.boolean(), groups, fc.boolean()), { minLength: 1, maxLength: 6 }), (items) => {
      const bodies: Body[] = [];
      for (const [m, plain, g, withControl] of items) {
        bodies.push(new PublishWire(publishHeader(plain, g), m, SENDER));
        if (withControl) bodies.push(encodeControl({ t: 'ack', ids: ['1-0'] }));
      }
      const frame = encodeFrame(KEY, { sender: SENDER, target: 'in:x', ts: 1, seq: 1 }, bodies);
      const decoded = decodeFrame(frame, new Map([[KEY.id, KEY.key]]), 'in:x');
      if ('problem' in decoded) return t.fail(decoded.problem);
      t.is(decoded.bodies.length, bodies.length);
      let i = 0;
      for (const [m, plain, g, withControl] of items) {
        const body = decodeBody(decoded.bodies[i++] as Buffer, decoded.sender);
        if (body.kind !== BodyKind.Publish) return t.fail('not a publish');
        t.is(body.plain, plain);
        t.deepEqual(body.groups, g);
        t.deepEqual(body.message, m);
        if (withControl) t.is(decodeBody(decoded.bodies[i++] as Buffer).kind, BodyKind.Control);
      }
    }),
    { seed: SEED, numRuns: 300 },
  );
});

test('a frame is refused when a byte of a publish written into it changes', (t) => {
  const m: Message = { topic: 'a/b', payload: Buffer.from('x'), qos: 1, retain: false, origin: 'o', stamp: { node: SENDER, seq: 3 } };
  const frame = encodeFrame(KEY, { sender: SENDER, target: 'in:x', ts: 1, seq: 1 }, [new PublishWire(publishHeader(true, null), m, SENDER)]);
  const keys = new Map([[KEY.id, KEY.key]]);
  t.false('problem' in decodeFrame(frame, keys, 'in:x'));
  const at = frame.indexOf('a/b');
  frame[at] = 0x62;
  t.deepEqual(decodeFrame(frame, keys, 'in:x'), { problem: 'bad-signature' });
});
