"""Subscribe and print each message as a JSON line, until --count messages or --seconds."""
from common import Probe, emit, parser

p = parser(__doc__)
p.add_argument("--topic", required=True)
p.add_argument("--qos", type=int, default=1)
p.add_argument("--count", type=int, default=1)
p.add_argument("--seconds", type=float, default=10)
p.add_argument("--client-id", default="")
args = p.parse_args()
c = Probe(args, client_id=args.client_id)
emit(connack=c.connect()["rc"])
emit(suback=c.subscribe(args.topic, args.qos))
for m in c.receive(args.count, timeout=args.seconds):
    emit(message=m)
c.disconnect()
