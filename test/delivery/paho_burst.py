"""A burst of QoS 1 messages with paho-mqtt's defaults: one subscriber, one publisher that
sends every message at once (paho queues what its in-flight window does not take). Prints the
number received, then OK if they arrived complete and in order.

usage: paho_burst.py PORT COUNT (3|5)
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

port, count, version = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
topic = "burst/paho/" + version
got = []
done = threading.Event()
subscribed = threading.Event()


def on_message(_client, _userdata, msg):
    got.append(int(msg.payload))
    if len(got) == count:
        done.set()


sub = mqtt.Client(client_id="paho-burst-sub-" + version, protocol=proto)
sub.on_message = on_message
sub.on_subscribe = lambda *args: subscribed.set()
sub.connect("127.0.0.1", port)
sub.loop_start()
sub.subscribe(topic, qos=1)
subscribed.wait(5)

pub = mqtt.Client(client_id="paho-burst-pub-" + version, protocol=proto)
pub.connect("127.0.0.1", port)
pub.loop_start()
infos = [pub.publish(topic, str(i), qos=1) for i in range(count)]
done.wait(60)
print(len(got))
print("OK" if got == list(range(count)) else "NOT IN ORDER OR INCOMPLETE")
pub.loop_stop()
sub.loop_stop()
