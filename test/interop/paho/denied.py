"""The answers to actions the policy denies (interop/denied/# here): SUBACK 0x87 (v3: 0x80) and,
in MQTT 5, UNSUBACK 0x87; the connection stays usable. Also prints the SUBACK of an allowed filter
sent in the same packet, which is granted."""
import paho.mqtt.client as mqtt
from common import Probe, emit, parser

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
c = Probe(args, client_id=name)
result = {"connack": c.connect()["rc"]}
filters = [(f"{args.prefix}/allowed", 1), ("interop/denied/x", 1)]
if c.v5:
    filters = [(t, mqtt.SubscribeOptions(qos=q)) for t, q in filters]
c.c.subscribe(filters)
result["suback"] = c.subacks.get(timeout=5)
if c.v5:
    result["unsuback"] = c.unsubscribe("interop/denied/x")
# Still connected: an allowed publish and subscribe work afterwards.
c.publish(f"{args.prefix}/allowed", "still here", qos=1)
result["after"] = [m["payload"] for m in c.receive(1)]
c.disconnect()
emit(**result)
