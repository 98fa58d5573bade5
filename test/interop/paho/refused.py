"""Does one thing a default limit refuses, and prints the broker's answer: the DISCONNECT reason
code (MQTT 5), whether the connection was closed, and SUBACK codes.

  --publish-bytes N     publish a payload of N bytes (limits.maxPacketSize)
  --topic-levels N      publish to a topic of N levels (limits.maxTopicLevels)
  --filter-levels N     subscribe to a filter of N levels (limits.maxTopicLevels)
  --user-properties N   publish with N user properties (limits.maxUserProperties)
  --topic-alias N       publish with topic alias N (limits.topicAliasMaximum)
  --subscriptions N     subscribe to N filters, 100 per SUBSCRIBE (limits.maxSubscriptionsPerClient)
"""

from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes
import paho.mqtt.client as mqtt

p = parser(__doc__)
p.add_argument("--client-id", required=True)
for flag in ("--publish-bytes", "--topic-levels", "--filter-levels", "--user-properties", "--topic-alias", "--subscriptions"):
    p.add_argument(flag, type=int)
args = p.parse_args()
c = Probe(args, client_id=args.client_id)
result = {"connack": c.connect()["rc"]}
topic = f"{args.prefix}/t"
if args.publish_bytes:
    c.c.publish(topic, b"x" * args.publish_bytes, qos=1)
if args.topic_levels:
    c.c.publish("/".join([args.prefix] + ["l"] * (args.topic_levels - 1)), "deep", qos=1)
if args.filter_levels:
    result["suback"] = c.subscribe("/".join([args.prefix] + ["l"] * (args.filter_levels - 1)), 1)
if args.user_properties:
    pr = props(PacketTypes.PUBLISH)
    pr.UserProperty = [(f"k{i}", "v") for i in range(args.user_properties)]
    c.c.publish(topic, "props", qos=1, properties=pr)
if args.topic_alias:
    c.c.publish(topic, "aliased", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=args.topic_alias))
if args.subscriptions:
    last = []
    for start in range(0, args.subscriptions, 100):
        batch = [(f"{args.prefix}/s/{i}", 0) for i in range(start, min(start + 100, args.subscriptions))]
        if c.v5:
            batch = [(t, mqtt.SubscribeOptions(qos=q)) for t, q in batch]
        c.c.subscribe(batch)
        last = c.subacks.get(timeout=5)
    result["last_suback"] = last[-3:]
# What the broker did: a DISCONNECT (MQTT 5) or a closed connection.
expect_close = any((args.publish_bytes, args.topic_levels, args.user_properties, args.topic_alias))
try:
    result["disconnect"] = c.disconnects.get(timeout=3 if expect_close else 0.3)["rc"]
except Exception:
    result["disconnect"] = None
result["connected"] = c.c.is_connected()
c.c.loop_stop()
emit(**result)
