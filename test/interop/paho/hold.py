"""Connect with a will and stay connected until killed. With --silent, stop the network loop
after the CONNACK, so no PINGREQ is ever sent and the broker's keep-alive ends the connection.
With --then disconnect (or disconnect-with-will, MQTT 5 reason 0x04), disconnect and exit."""
import time

from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCodes

p = parser(__doc__)
p.add_argument("--client-id", required=True)
p.add_argument("--keepalive", type=int, default=60)
p.add_argument("--will-qos", type=int, default=1)
p.add_argument("--will-retain", action="store_true")
p.add_argument("--will-delay", type=int, help="MQTT 5 Will Delay Interval")
p.add_argument("--session-expiry", type=int, help="MQTT 5 Session Expiry Interval")
p.add_argument("--silent", action="store_true")
p.add_argument("--resume", action="store_true", help="clean session / clean start 0")
p.add_argument("--then", choices=["stay", "disconnect", "disconnect-with-will"], default="stay")
args = p.parse_args()
c = Probe(args, client_id=args.client_id, clean=not args.resume)
will = {"topic": f"{args.prefix}/will", "payload": f"{args.client_id} is gone", "qos": args.will_qos, "retain": args.will_retain}
connect_props = None
if c.v5:
    if args.will_delay is not None:
        will["properties"] = props(PacketTypes.WILLMESSAGE, WillDelayInterval=args.will_delay)
    if args.session_expiry is not None:
        connect_props = props(PacketTypes.CONNECT, SessionExpiryInterval=args.session_expiry)
connack = c.connect(keepalive=args.keepalive, will=will, properties=connect_props)
if args.silent:
    c.c.loop_stop()
emit(connected=connack["rc"], properties=connack["properties"])
if args.then == "disconnect":
    c.disconnect()
elif args.then == "disconnect-with-will":
    c.disconnect(reasoncode=ReasonCodes(PacketTypes.DISCONNECT, "Disconnect with will message"))
else:
    time.sleep(60)
