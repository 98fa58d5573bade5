"""Shared subscriptions: two members of $share/workers/... split the messages between them, each
message going to exactly one member; a plain subscriber to the same filter gets them all."""
from common import Probe, emit, parser

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
jobs = f"{args.prefix}/jobs/+"
members = [Probe(args, client_id=f"{name}-worker-{i}") for i in range(2)]
result = {"suback": []}
for m in members:
    m.connect()
    result["suback"] += m.subscribe(f"$share/workers/{jobs}", 1)
watcher = Probe(args, client_id=name + "-watcher")
watcher.connect()
watcher.subscribe(jobs, 1)
pub = Probe(args, client_id=name + "-pub")
pub.connect()
for i in range(10):
    pub.publish(f"{args.prefix}/jobs/{i}", f"job {i}", qos=1)
result["watcher"] = len(watcher.receive(10))
got = [[m["payload"] for m in member.receive(10, timeout=1.0)] for member in members]
result["per_member"] = [len(g) for g in got]
result["all"] = sorted(p for g in got for p in g)
for c in members + [watcher, pub]:
    c.disconnect()
emit(**result)
