"""Connect two clients, subscribe at QoS 0, 1 and 2, publish one message at each QoS, check each
arrives once at the granted QoS, then disconnect both."""
from common import Probe, emit, parser

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
sub = Probe(args, client_id=name + "-sub")
pub = Probe(args, client_id=name + "-pub")
result = {"connack": [sub.connect()["rc"], pub.connect()["rc"]], "suback": [], "acked": []}
for qos in (0, 1, 2):
    result["suback"] += sub.subscribe(f"{args.prefix}/q{qos}", qos)
for qos in (0, 1, 2):
    result["acked"].append(pub.publish(f"{args.prefix}/q{qos}", f"at qos {qos}", qos=qos))
got = sub.receive(3)
got += sub.receive(1, timeout=0.3)  # a duplicate would show up here
result["received"] = sorted((m["topic"], m["qos"], m["payload"]) for m in got)
pub.disconnect()
sub.disconnect()
emit(**result)
