/**
 * Unit tests for the topic rules in src/protocol/topic.ts: matching of topic names against
 * filters, validation of names and filters, and parsing of `$share/{group}/{filter}`.
 */
import test from 'ava';
import type { TopicLimits } from '../src/protocol/limits.ts';
import { checkTopicFilter, checkTopicName, parseShared, topicMatches } from '../src/protocol/topic.ts';

const limits: TopicLimits = { maxTopicLength: 4096, maxTopicLevels: 64 };

/** Asserts every [filter, topic] pair matches (or not). */
function expectMatches(t: import('ava').ExecutionContext, pairs: [string, string][], expected: boolean): void {
  for (const [filter, topic] of pairs) {
    t.is(topicMatches(filter, topic), expected, `topicMatches(${JSON.stringify(filter)}, ${JSON.stringify(topic)}) should be ${expected}`);
  }
}

test('an exact filter matches only the identical topic name', (t) => {
  expectMatches(t, [['a/b/c', 'a/b/c'], ['a', 'a'], ['sport/tennis/player1', 'sport/tennis/player1']], true);
  expectMatches(
    t,
    [
      ['a/b/c', 'a/b'],
      ['a/b', 'a/b/c'],
      ['a/b', 'a/bc'],
      ['a/bc', 'a/b'],
      ['ab', 'a'],
      ['a', 'ab'],
      ['A/b', 'a/b'], // [MQTT-4.7.3-4] no normalization: topics are case sensitive
      ['a/b', 'a/b/'],
      ['a/b/', 'a/b'],
    ],
    false,
  );
});

test("'+' matches exactly one level, including an empty one", (t) => {
  // the single-level wildcard matches one and only one level (MQTT 3.1.1 section 4.7.1.3)
  expectMatches(
    t,
    [
      ['sport/tennis/+', 'sport/tennis/player1'],
      ['sport/tennis/+', 'sport/tennis/player2'],
      ['+/tennis/+', 'sport/tennis/x'],
      ['+', 'a'],
      ['a/+/c', 'a/b/c'],
      ['a/+/c', 'a//c'], // an empty level is a level
      ['a/+', 'a/'],
      ['+/+', '/finance'],
      ['/+', '/finance'],
      ['+/+', '/'],
    ],
    true,
  );
  expectMatches(
    t,
    [
      ['sport/tennis/+', 'sport/tennis/player1/ranking'],
      ['sport/+', 'sport'], // '+' needs a level to be there
      ['+', '/finance'],
      ['+', 'a/b'],
      ['a/+/c', 'a/b/d'],
      ['a/+/c', 'a/c'],
      ['a/+', 'a/b/c'],
    ],
    false,
  );
});

test("'#' matches the parent level and any number of child levels", (t) => {
  // "sport/tennis/#" matches "sport/tennis" too (MQTT 3.1.1 section 4.7.1.2)
  expectMatches(
    t,
    [
      ['#', 'a'],
      ['#', 'a/b/c'],
      ['#', '/'],
      ['#', '/a'],
      ['a/#', 'a'],
      ['a/#', 'a/b'],
      ['a/#', 'a/b/c/d'],
      ['a/#', 'a/'],
      ['sport/tennis/player1/#', 'sport/tennis/player1'],
      ['sport/tennis/player1/#', 'sport/tennis/player1/ranking'],
      ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon'],
      ['+/#', 'a'],
      ['+/#', 'a/b/c'],
      ['/#', '/'],
      ['a/+/#', 'a/b'],
    ],
    true,
  );
  expectMatches(
    t,
    [
      ['a/#', 'ab'],
      ['a/#', 'b/a'],
      ['a/b/#', 'a'],
      ['a/#', 'ab/c'],
      ['sport/tennis/player1/#', 'sport/tennis/player2'],
      ['a/+/#', 'a'],
    ],
    false,
  );
});

test('empty levels are distinct levels', (t) => {
  expectMatches(t, [['a//b', 'a//b'], ['/a', '/a'], ['a/', 'a/'], ['//', '//']], true);
  expectMatches(
    t,
    [
      ['a//b', 'a/b'],
      ['a/b', 'a//b'],
      ['/a', 'a'],
      ['a', '/a'],
      ['a/', 'a'],
      ['a', 'a/'],
      ['a//b', 'a/x/b'],
    ],
    false,
  );
});

test("a filter starting with a wildcard does not match a topic starting with '$'", (t) => {
  // [MQTT-4.7.2-1]
  expectMatches(
    t,
    [
      ['#', '$SYS/broker/uptime'],
      ['#', '$foo'],
      ['+', '$foo'],
      ['+/monitor/Clients', '$SYS/monitor/Clients'],
      ['+/#', '$SYS/x'],
      ['+/+', '$SYS/x'],
    ],
    false,
  );
  expectMatches(
    t,
    [
      ['$SYS/#', '$SYS/broker/uptime'],
      ['$SYS/#', '$SYS'],
      ['$SYS/monitor/+', '$SYS/monitor/Clients'],
      ['$foo', '$foo'],
      ['$foo/#', '$foo/bar'],
      ['a/#', 'a/$b'], // only the first level is special
      ['+/$b', 'a/$b'],
    ],
    true,
  );
});

test('checkTopicName accepts ordinary names and refuses empty, wildcard and U+0000 names', (t) => {
  for (const name of ['a', 'a/b', '/', 'a//b', '$SYS/x', 'sport/tennis/player1', 'ünïcödé/ok', ' space ']) {
    t.deepEqual(checkTopicName(name, limits), { ok: true }, name);
  }
  // [MQTT-4.7.3-1] a topic name is at least one character
  t.false(checkTopicName('', limits).ok);
  // [MQTT-4.7.1-1] [MQTT-3.3.2-2] no wildcard characters in a topic name
  for (const name of ['a/+', '+', '#', 'a/#', 'a+b', 'a#']) {
    t.false(checkTopicName(name, limits).ok, name);
  }
  // [MQTT-4.7.3-2] no U+0000
  t.false(checkTopicName('a\u0000b', limits).ok);
});

test('checkTopicName enforces the length and level limits', (t) => {
  const small: TopicLimits = { maxTopicLength: 8, maxTopicLevels: 3 };
  t.true(checkTopicName('abcdefgh', small).ok);
  t.false(checkTopicName('abcdefghi', small).ok);
  t.false(checkTopicName('ééééé', small).ok, 'the limit counts UTF-8 bytes, not characters');
  t.true(checkTopicName('a/b/c', small).ok);
  t.false(checkTopicName('a/b/c/d', small).ok);
});

test('checkTopicFilter accepts valid filters', (t) => {
  for (const filter of ['#', '+', 'a', 'a/#', 'a/+', '+/+', '+/#', 'a/+/b/#', '/', '/#', 'a//b', '$SYS/#', '+/tennis/#', 'sport/+/player1']) {
    t.deepEqual(checkTopicFilter(filter, limits), { ok: true }, filter);
  }
});

test("checkTopicFilter refuses '#' not last or not alone, '+' not alone, empty and U+0000 filters", (t) => {
  // [MQTT-4.7.1-2] '#' must be alone in the last level
  for (const filter of ['a/#/b', '#/a', '#a', 'a#', 'a/b#', '##', 'a/#/#']) {
    const check = checkTopicFilter(filter, limits);
    t.false(check.ok, filter);
  }
  // [MQTT-4.7.1-3] '+' must occupy an entire level
  for (const filter of ['a+', '+a', 'a/+b', 'a/b+/c', '++', 'sport+']) {
    t.false(checkTopicFilter(filter, limits).ok, filter);
  }
  // [MQTT-4.7.3-1] at least one character; [MQTT-4.7.3-2] no U+0000
  t.false(checkTopicFilter('', limits).ok);
  t.false(checkTopicFilter('a/\u0000', limits).ok);
});

test('checkTopicFilter enforces the length and level limits', (t) => {
  const small: TopicLimits = { maxTopicLength: 8, maxTopicLevels: 3 };
  t.true(checkTopicFilter('a/+/#', small).ok);
  t.false(checkTopicFilter('a/+/b/#', small).ok);
  t.false(checkTopicFilter('abcdefghi', small).ok);
});

test('parseShared splits $share/{group}/{filter} and leaves ordinary filters alone', (t) => {
  t.is(parseShared('a/b'), null);
  t.is(parseShared('#'), null);
  t.is(parseShared('$SYS/#'), null);
  t.is(parseShared('$sharex/g/a'), null);
  t.deepEqual(parseShared('$share/g/t/#'), { group: 'g', filter: 't/#' });
  t.deepEqual(parseShared('$share/consumer1/sport/tennis/+'), { group: 'consumer1', filter: 'sport/tennis/+' });
  t.deepEqual(parseShared('$share/g/#'), { group: 'g', filter: '#' });
  t.deepEqual(parseShared('$share/g//a'), { group: 'g', filter: '/a' });
});

test('parseShared refuses a missing group, a wildcard in the group and an empty filter', (t) => {
  // [MQTT-4.8.2-1] the share name is at least one character and has no '/', '+' or '#'
  // [MQTT-4.8.2-2] it is followed by '/' and a topic filter
  for (const filter of ['$share/', '$share/g', '$share//a', '$share/g/', '$share/+/a', '$share/#/a', '$share/g+/a', '$share/g#/a']) {
    const parsed = parseShared(filter);
    t.truthy(parsed, filter);
    t.true(parsed !== null && 'error' in parsed, `${filter} should be refused`);
  }
});
