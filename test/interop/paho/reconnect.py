"""The same client id connects and disconnects --times times in a row (a test suite, a CI job, a
device that connects once per reading); every CONNACK is printed."""
import time

from common import Probe, emit, parser

p = parser(__doc__)
p.add_argument("--times", type=int, default=100)
args = p.parse_args()
name = args.prefix.replace("/", "-")
codes = []
start = time.time()
for i in range(args.times):
    c = Probe(args, client_id=name)
    codes.append(c.connect()["rc"])
    c.disconnect()
emit(codes=codes, seconds=round(time.time() - start, 2))
