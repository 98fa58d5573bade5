"""Delivery details: user properties pass through to MQTT 5 subscribers; a message bigger than
the subscriber's Maximum Packet Size is not sent to it (MQTT 5); a retained message is not sent
to a new shared subscription; the subscriber's Receive Maximum is respected."""
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
p = args.prefix
result = {}
pub = Probe(args, client_id=name + "-pub")
pub.connect()

small = Probe(args, client_id=name + "-small")
small.connect(properties=props(PacketTypes.CONNECT, MaximumPacketSize=200) if small.v5 else None)
small.subscribe(f"{p}/sized", 1)
pub.publish(f"{p}/sized", "x" * 500, qos=1)  # too big for a 200-byte maximum
up = props(PacketTypes.PUBLISH)
up.UserProperty = [("origin", "paho"), ("unit", "celsius")]
pub.publish(f"{p}/sized", "fits", qos=1, properties=up)
got = small.receive(2, timeout=1.0)
result["sized"] = [(len(m["payload"]), m["properties"].get("UserProperty")) for m in got]
small.disconnect()

pub.publish(f"{p}/jobs/state", "retained", qos=1, retain=True)
member = Probe(args, client_id=name + "-member")
member.connect()
member.subscribe(f"$share/g/{p}/jobs/#", 1)
result["shared_retained"] = [m["payload"] for m in member.receive(1, timeout=0.5)]
member.disconnect()
pub.publish(f"{p}/jobs/state", "", qos=1, retain=True)
pub.disconnect()
emit(**result)
