"""MQTT 5 topic aliases both ways. Inbound: the publisher sets alias 1 with the topic, then sends
only the alias. Outbound: the subscriber allows 4 aliases; the broker sends the topic once with
an alias, then the alias alone. (paho 1.6 does not resolve aliases it receives: the script
prints what arrived on the wire.)"""
from common import Probe, emit, parser, props
from paho.mqtt.packettypes import PacketTypes

args = parser(__doc__).parse_args()
name = args.prefix.replace("/", "-")
topic = f"{args.prefix}/aliased/topic"
sub = Probe(args, client_id=name + "-sub")
result = {"connack": sub.connect(properties=props(PacketTypes.CONNECT, TopicAliasMaximum=4))}
sub.subscribe(topic, 1)
pub = Probe(args, client_id=name + "-pub")
result["server_alias_maximum"] = pub.connect()["properties"].get("TopicAliasMaximum")
pub.publish(topic, "one", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
pub.publish("", "two", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
pub.publish("", "three", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
result["received"] = [(m["topic"], m["payload"], m["properties"].get("TopicAlias")) for m in sub.receive(3)]
pub.disconnect()
sub.disconnect()
emit(**result)
