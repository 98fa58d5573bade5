"""Publishes --count messages at --qos as fast as paho sends them, to a broker with a rate limit,
and prints what came back: the reason code of each PUBACK, PUBREC and PUBCOMP in the order they
arrived (read from the packets: paho 1.6 passes no reason code to on_publish), the
DISCONNECT the broker sent, whether paho's network thread survived the answers, and how long
the acknowledgements took. With --later SECONDS, one more QoS 1 publish after that pause shows
whether the connection is still usable."""
import time

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK, PUBCOMP, PUBREC
from common import Probe, emit, parser

p = parser(__doc__)
p.add_argument("--count", type=int, required=True)
p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
p.add_argument("--later", type=float, default=0.0)
args = p.parse_args()

ACKS = {PUBACK: "puback", PUBREC: "pubrec", PUBCOMP: "pubcomp"}
acks = []
_packet_handle = mqtt.Client._packet_handle


def packet_handle(self):
    # Each acknowledgement as it arrives (a success may leave the code out: 0), before paho
    # decodes it; paho then checks that the code is one the spec allows in this packet, and its
    # network thread dies of an exception otherwise.
    cmd = self._in_packet["command"] & 0xF0
    if cmd in ACKS:
        body = self._in_packet["packet"]
        acks.append([ACKS[cmd], body[2] if self._protocol == mqtt.MQTTv5 and len(body) > 2 else 0])
    return _packet_handle(self)


mqtt.Client._packet_handle = packet_handle

c = Probe(args, client_id=args.prefix.replace("/", "-"))
result = {"connack": c.connect()["rc"]}
started = time.time()
infos = [c.c.publish(f"{args.prefix}/m", str(i), qos=args.qos) for i in range(args.count)]
disconnect = None
end = started + 15
while time.time() < end:
    with c.published_cv:
        done = all(i.mid in c.published for i in infos)
    if not c.disconnects.empty():
        disconnect = c.disconnects.get()["rc"]
        break
    if done or c.c._thread is None or not c.c._thread.is_alive():
        break
    time.sleep(0.02)
result["seconds"] = round(time.time() - started, 2)
with c.published_cv:
    result["completed"] = sum(1 for i in infos if i.mid in c.published)
result["alive"] = c.c._thread is not None and c.c._thread.is_alive()
result["disconnect"] = disconnect
if args.later > 0 and disconnect is None and result["alive"]:
    time.sleep(args.later)
    before = len(acks)
    result["later"] = c.publish(f"{args.prefix}/later", "later", qos=1)
    result["laterAck"] = acks[before][1] if len(acks) > before else None
result["acks"] = acks
c.c.disconnect()
c.c.loop_stop()
emit(**result)
