"""MQTT 5 request / response: a requester publishes with a Response Topic and Correlation Data; a
responder answers on that topic with the same Correlation Data."""
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
responder = Probe(args, client_id=name + "-responder")
responder.connect()
responder.subscribe(f"{args.prefix}/requests", 1)
requester = Probe(args, client_id=name + "-requester")
requester.connect()
reply_to = f"{args.prefix}/replies/{name}"
requester.subscribe(reply_to, 1)

request = props(PacketTypes.PUBLISH, ResponseTopic=reply_to, CorrelationData=b"req-42", ContentType="text/plain")
request.UserProperty = [("tenant", "acme")]
requester.publish(f"{args.prefix}/requests", "what time is it?", qos=1, properties=request)
asked = responder.receive(1)
result = {"request": asked[0] if asked else None}
if asked:
    p = asked[0]["properties"]
    answer = props(PacketTypes.PUBLISH, CorrelationData=bytes.fromhex(p["CorrelationData"]))
    responder.publish(p["ResponseTopic"], "noon", qos=1, properties=answer)
result["response"] = (requester.receive(1) or [None])[0]
responder.disconnect()
requester.disconnect()
emit(**result)
