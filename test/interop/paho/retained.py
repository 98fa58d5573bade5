"""A retained message reaches a client that subscribes later (RETAIN set), reaches live
subscribers without RETAIN, and is cleared by an empty retained message."""
from common import Probe, emit, parser

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
topic = f"{args.prefix}/state"
live = Probe(args, client_id=name + "-live")
live.connect()
live.subscribe(topic, 1)
pub = Probe(args, client_id=name + "-pub")
pub.connect()
pub.publish(topic, "on", qos=1, retain=True)
result = {"live": [(m["payload"], m["retain"]) for m in live.receive(1)]}

late = Probe(args, client_id=name + "-late")
late.connect()
late.subscribe(topic, 1)
result["late"] = [(m["payload"], m["retain"], m["qos"]) for m in late.receive(1)]
late.disconnect()

pub.publish(topic, "", qos=1, retain=True)  # clears it
cleared = Probe(args, client_id=name + "-after-clear")
cleared.connect()
cleared.subscribe(topic, 1)
result["after_clear"] = [m["payload"] for m in cleared.receive(1, timeout=0.5)]
for c in (cleared, pub, live):
    c.disconnect()
emit(**result)
