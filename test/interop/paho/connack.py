"""Connects once with the options given and prints the CONNACK (reason code, Session Present and
MQTT 5 properties); with --hold, stays connected until the broker ends the connection and prints
how (the DISCONNECT reason code, e.g. 0x8E when another connection takes the session over)."""
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

p = parser(__doc__)
p.add_argument("--client-id", default="")
p.add_argument("--clean", choices=["yes", "no"], default="yes")
p.add_argument("--session-expiry", type=int)
p.add_argument("--no-problem-information", action="store_true", help="Request Problem Information 0")
p.add_argument("--will-topic")
p.add_argument("--hold", type=float, default=0, help="seconds to wait for the broker to end the connection")
args = p.parse_args()
c = Probe(args, client_id=args.client_id, clean=args.clean == "yes")
connect_props = None
if c.v5:
    values = {}
    if args.session_expiry is not None:
        values["SessionExpiryInterval"] = args.session_expiry
    if args.no_problem_information:
        values["RequestProblemInformation"] = 0
    connect_props = props(PacketTypes.CONNECT, **values) if values else None
will = {"topic": args.will_topic, "payload": "will", "qos": 1} if args.will_topic else None
connack = c.connect(properties=connect_props, will=will)
emit(connack=connack)
if args.hold > 0 and connack["rc"] == 0:
    try:
        emit(ended=c.disconnects.get(timeout=args.hold))
    except Exception:
        emit(ended=None)
    c.c.loop_stop()
elif connack["rc"] == 0:
    c.disconnect()
else:
    c.c.loop_stop()
