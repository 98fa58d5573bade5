"""Shared by the paho scripts: the command line every script takes, and a paho client with its
default options whose callbacks are recorded so a script can wait for each answer in turn.

The scripts print one JSON object per line (what they saw); the tests assert on those lines.
Only host, port, credentials, the transport and the TLS files are configured, as a user would.
"""
import argparse
import json
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

VERSIONS = {"3.1": mqtt.MQTTv31, "3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
WAIT = 10.0


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=sorted(VERSIONS), default="3.1.1")
    p.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    p.add_argument("--cafile", help="verify the server with this CA (turns TLS on)")
    p.add_argument("--cert", help="client certificate (mTLS)")
    p.add_argument("--key", help="client key (mTLS)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--bind", default="", help="source address (127.0.0.x) to tell clients apart")
    p.add_argument("--prefix", required=True, help="topics of this run start with it")
    return p


def emit(**fields):
    print(json.dumps(fields), flush=True)


def code(rc):
    """A reason code as a number: paho gives MQTT 5 codes as ReasonCodes objects."""
    return rc.value if hasattr(rc, "value") else int(rc)


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Probe:
    """One paho client. Each callback puts what it got on a queue; the methods wait for it."""

    def __init__(self, args, client_id="", clean=True):
        self.args = args
        self.v5 = args.version == "5"
        kwargs = {"client_id": client_id, "protocol": VERSIONS[args.version], "transport": args.transport}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.clean = clean
        self.c = mqtt.Client(**kwargs)
        if args.cafile:
            self.c.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
        if args.username:
            self.c.username_pw_set(args.username, args.password)
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.messages = queue.Queue()
        self.published = set()
        self.published_cv = threading.Condition()
        self.disconnects = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect

    # paho's callbacks (MQTT 5 ones take properties and reason codes)
    def _on_connect(self, client, userdata, flags, rc, properties=None):
        self.connacks.put({"rc": code(rc), "session_present": bool(flags.get("session present")), "properties": _props(properties)})

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        self.subacks.put([code(g) for g in granted])

    def _on_unsubscribe(self, client, userdata, mid, properties=None, reason_codes=None):
        codes = reason_codes if isinstance(reason_codes, list) else ([reason_codes] if reason_codes is not None else [])
        self.unsubacks.put([code(r) for r in codes])

    def _on_message(self, client, userdata, m):
        self.messages.put({"topic": m.topic, "payload": m.payload.decode("utf-8", "replace"), "qos": m.qos,
                           "retain": bool(m.retain), "dup": bool(m.dup), "properties": _props(getattr(m, "properties", None))})

    def _on_publish(self, client, userdata, mid):
        with self.published_cv:
            self.published.add(mid)
            self.published_cv.notify_all()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.disconnects.put({"rc": code(rc), "properties": _props(properties)})

    # what a script does
    def connect(self, keepalive=60, properties=None, will=None):
        """Connects and returns the CONNACK as a dict (rc, session_present, properties)."""
        if will is not None:
            self.c.will_set(**will)
        kwargs = {"keepalive": keepalive, "bind_address": self.args.bind}
        if self.v5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = properties
        try:
            self.c.connect(self.args.host, self.args.port, **kwargs)
        except Exception as err:  # refused at the TLS handshake, or the socket closed
            return {"rc": -1, "error": type(err).__name__, "session_present": False, "properties": {}}
        self.c.loop_start()
        try:
            return self.connacks.get(timeout=WAIT)
        except queue.Empty:
            return {"rc": -1, "error": "no CONNACK", "session_present": False, "properties": {}}

    def subscribe(self, topic, qos=0, **options):
        if self.v5:
            self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options))
        else:
            self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def unsubscribe(self, topic):
        self.c.unsubscribe(topic)
        return self.unsubacks.get(timeout=WAIT)

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and, for QoS 1 and 2, waits for the PUBACK / PUBCOMP."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        with self.published_cv:
            self.published_cv.wait_for(lambda: info.mid in self.published, timeout=WAIT)
            return info.mid in self.published

    def receive(self, count, timeout=WAIT):
        """The next `count` messages, or fewer if they do not come within `timeout` seconds."""
        got = []
        end = time.time() + timeout
        while len(got) < count:
            left = end - time.time()
            if left <= 0:
                break
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def disconnect(self, properties=None, reasoncode=None):
        self.c.disconnect(reasoncode=reasoncode, properties=properties)
        self.c.loop_stop()


def _props(p):
    """The MQTT 5 properties paho decoded, as JSON (bytes as text)."""
    if p is None:
        return {}
    out = {}
    for name, value in p.json().items():
        out[name] = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value
    return out


def fail(message):
    emit(error=message)
    sys.exit(1)
