"""MQTT 5 expiry. Message expiry: of two messages queued for an offline session, the one whose
Message Expiry Interval passed is not delivered; the other arrives with its remaining interval.
Session expiry: a session with a 1 s Session Expiry Interval is gone 2 s after the disconnect."""
import time

from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
topic = f"{args.prefix}/expiring"
keep = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
sub = Probe(args, client_id=name + "-sub", clean=False)
sub.connect(properties=keep)
sub.subscribe(topic, 1)
sub.disconnect()
pub = Probe(args, client_id=name + "-pub")
pub.connect()
pub.publish(topic, "short-lived", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
pub.publish(topic, "long-lived", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
time.sleep(2.2)
sub = Probe(args, client_id=name + "-sub", clean=False)
result = {"message_session_present": sub.connect(properties=keep)["session_present"]}
result["delivered"] = [(m["payload"], m["properties"].get("MessageExpiryInterval")) for m in sub.receive(2, timeout=1.0)]
sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))

short = Probe(args, client_id=name + "-short", clean=False)
result["short_first"] = short.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=1))["session_present"]
short.subscribe(topic, 1)
short.disconnect()
time.sleep(2.2)
short = Probe(args, client_id=name + "-short", clean=False)
result["short_after_expiry"] = short.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=1))["session_present"]
short.disconnect()
pub.disconnect()
emit(**result)
