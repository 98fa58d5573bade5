"""Subscription semantics: overlapping subscriptions (one delivery at the highest QoS; in MQTT 5
with every matching Subscription Identifier), re-subscribing replaces the QoS, '#' matches the
parent level, and in MQTT 5 Retain Handling, No Local, and UNSUBACK 0x00 / 0x11."""
import paho.mqtt.client as mqtt
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
p = args.prefix
c = Probe(args, client_id=name)
c.connect()
pub = Probe(args, client_id=name + "-pub")
pub.connect()
v5 = c.v5
result = {}


def sub(topic, qos, ident=None, **options):
    if v5:
        c.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options),
                      properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=ident) if ident else None)
        return c.subacks.get(timeout=5)
    return c.subscribe(topic, qos)


# Overlapping: a/# at QoS 1 (id 1) and a/b at QoS 2 (id 2); one message at QoS 2.
sub(f"{p}/a/#", 1, ident=1)
sub(f"{p}/a/b", 2, ident=2)
pub.publish(f"{p}/a/b", "overlap", qos=2)
got = c.receive(2, timeout=1.0)
result["overlap"] = [(m["payload"], m["qos"], sorted(m["properties"].get("SubscriptionIdentifier", []))) for m in got]
# '#' matches the parent level: a/# gets a.
pub.publish(f"{p}/a", "parent", qos=1)
result["parent"] = [m["payload"] for m in c.receive(1)]
# Re-subscribing a/# at QoS 0 replaces the QoS 1 subscription.
sub(f"{p}/a/#", 0, ident=3)
pub.publish(f"{p}/a/c", "resubscribed", qos=1)
result["resubscribed"] = [(m["payload"], m["qos"], m["properties"].get("SubscriptionIdentifier")) for m in c.receive(1)]

if v5:
    # Retain Handling: 0 always, 1 only for a new subscription, 2 never.
    pub.publish(f"{p}/r", "kept", qos=1, retain=True)
    rh = {}
    for handling in (0, 1, 2):
        sub(f"{p}/r", 1, retainHandling=handling)
        first = [m["payload"] for m in c.receive(1, timeout=0.5)]
        sub(f"{p}/r", 1, retainHandling=handling)  # the same subscription again
        again = [m["payload"] for m in c.receive(1, timeout=0.5)]
        c.unsubscribe(f"{p}/r")
        rh[handling] = [first, again]
    result["retain_handling"] = rh
    # No Local: the client's own message is not sent back through that subscription.
    sub(f"{p}/nl", 1, noLocal=True)
    c.publish(f"{p}/nl", "own", qos=1)
    pub.publish(f"{p}/nl", "other", qos=1)
    result["no_local"] = [m["payload"] for m in c.receive(2, timeout=1.0)]
    # UNSUBACK: 0x00 removed, 0x11 no such subscription.
    result["unsuback"] = c.unsubscribe(f"{p}/nl") + c.unsubscribe(f"{p}/never-subscribed")
c.disconnect()
pub.disconnect()
emit(**result)
