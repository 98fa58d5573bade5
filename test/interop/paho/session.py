"""A persistent session: subscribe at QoS 1 and 2, disconnect, let another client publish, then
resume the session and get what was queued (QoS 0 is not queued for an offline session)."""
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
# v3: clean session 0; v5: clean start 0 with a session expiry interval.
expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
first = Probe(args, client_id=name, clean=False)
result = {"first": first.connect(properties=expiry)["session_present"]}
first.subscribe(f"{args.prefix}/q1", 1)
first.subscribe(f"{args.prefix}/q2", 2)
first.subscribe(f"{args.prefix}/q0", 0)
first.disconnect()

pub = Probe(args, client_id=name + "-pub")
pub.connect()
for i in range(3):
    pub.publish(f"{args.prefix}/q1", f"q1 #{i}", qos=1)
pub.publish(f"{args.prefix}/q2", "q2", qos=2)
pub.publish(f"{args.prefix}/q0", "q0 is not queued", qos=0)
pub.disconnect()

again = Probe(args, client_id=name, clean=False)
result["resumed"] = again.connect(properties=expiry)["session_present"]
got = again.receive(4) + again.receive(1, timeout=0.3)
result["queued"] = [(m["topic"].rsplit("/", 1)[1], m["payload"], m["qos"]) for m in got]
again.disconnect()
# A clean session (clean start) discards it: the next connect finds none.
done = Probe(args, client_id=name, clean=True)
done.connect()
done.disconnect()
after = Probe(args, client_id=name, clean=False)
result["after_clean"] = after.connect(properties=expiry)["session_present"]
after.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0) if after.v5 else None)
emit(**result)
