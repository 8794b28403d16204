"""The fifteenth sweep's MQTT programs: paho-mqtt (its own socket and select loop, in a thread
of its own with loop_start, woken through a socketpair) against a real mosquitto on the kernel's
side, for tests/interop/test_programs15.py (issue 16).

    python mqtt_client.py NAME HOST PORT

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import os
import queue
import signal
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
from peerout import LIMIT, out, sha

name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Taker:
    """A client whose messages and events land on a queue, its network loop in paho's thread."""

    def __init__(self, cid: str, **kw) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, **kw)
        self.c.on_connect = lambda c, u, f, rc, p: self.q.put(("connect", str(rc)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.q.put(("subscribe", [int(r.value) for r in rcs]))
        self.c.on_message = lambda c, u, m: self.q.put(("message", m.topic, m.qos, m.retain, m.payload))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.q.put(("disconnect", str(rc)))

    def start(self, keepalive: int = 60) -> "Taker":
        self.c.connect(host, port, keepalive)
        self.c.loop_start()
        assert self.take() == ("connect", "Success")
        return self

    def take(self):
        return self.q.get(timeout=LIMIT)

    def subscribe(self, topic: str, qos: int) -> list:
        self.c.subscribe(topic, qos)
        return self.take()[1]

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def acked(pub: mqtt.Client, info: mqtt.MQTTMessageInfo) -> None:
    """The publisher's loop, run in this thread until the broker has acknowledged `info`."""
    for _ in range(int(LIMIT / 0.01)):
        if info.is_published():
            return
        pub.loop(0.01)
    raise TimeoutError("not acknowledged")


def messages() -> dict:
    """QoS 0, 1 and 2 messages of 1 byte to 256 KB, in order and whole (SHA-256), from a
    publisher whose loop runs in the main thread (loop() until each is acknowledged); a retained
    message seen by a subscriber that comes after, then cleared."""
    sub = Taker("sub").start()
    granted = sub.subscribe("t/#", 2)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect(host, port, 60)
    sizes = [1, 1000, 65536, 262144]
    sent = []
    for qos in (0, 1, 2):
        for n in sizes:
            payload = os.urandom(n)
            sent.append([f"t/{qos}/{n}", qos, sha(payload)])
            acked(pub, pub.publish(f"t/{qos}/{n}", payload, qos))
    got = []
    for _ in sent:
        _kind, topic, qos, _retain, payload = sub.take()
        got.append([topic, qos, sha(payload)])
    acked(pub, pub.publish("r/kept", b"retained", 1, retain=True))
    late = Taker("late").start()
    late.subscribe("r/#", 1)
    _, topic, qos, retain, payload = late.take()
    retained = [topic, qos, retain, payload.decode()]
    acked(pub, pub.publish("r/kept", b"", 1, retain=True))  # (an empty retained message clears it)
    seen = sub.c.socket().getsockname()[0]  # (the program's socket: usnet's under `usnet run`)
    pub.disconnect()
    late.stop()
    sub.stop()
    return {"from": seen, "granted": granted, "same": got == sent, "n": len(got), "retained": retained}


def will() -> dict:
    """A client killed with SIGKILL (a child process, on usnet too under `usnet run`): the broker
    finds its connection gone and publishes its will; a client that disconnects cleanly has its
    will dropped (nothing published: a second, clean child's will never comes, the first's does)."""
    watcher = Taker("watcher").start()
    watcher.subscribe("will/#", 1)
    found = {}
    for how in ("clean", "killed"):
        child = subprocess.Popen([sys.executable, "-u", __file__, "willing", host, str(port), how],
                                 stdout=subprocess.PIPE)
        assert child.stdout is not None
        found[f"{how}_ready"] = child.stdout.readline().decode().strip()
        if how == "killed":
            child.send_signal(signal.SIGKILL)
        found[f"{how}_exit"] = child.wait(LIMIT)
        child.stdout.close()
    _, topic, qos, _retain, payload = watcher.take()  # (the clean one's will would come first)
    found["will"] = [topic, qos, payload.decode()]
    watcher.stop()
    return found


def willing() -> None:
    """The child of will(): connected with a will, says so, then disconnects cleanly or waits to
    be killed."""
    how = sys.argv[4]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"willing-{how}")
    c.will_set(f"will/{how}", f"{how} is gone".encode(), 1)
    c.connect(host, port, 60)
    for _ in range(int(LIMIT / 0.01)):
        c.loop(0.01)
        if c.is_connected():
            break
    print("connected", flush=True)
    if how == "clean":
        c.disconnect()
        c.loop(0.1)
        return
    threading.Event().wait(LIMIT)  # (killed long before)


def aio() -> dict:
    """aiomqtt (paho's client driven by the asyncio loop: add_reader and add_writer on its socket's
    descriptor, usnet's readiness under `usnet run`): 40 QoS 1 messages of 100 KB published at
    once arrive whole; then another client takes the subscriber's client id, the broker closes
    the subscriber's connection, and its message iterator raises."""
    import asyncio

    import aiomqtt

    async def run() -> dict:
        sent = [os.urandom(100_000) for _ in range(40)]
        got: list[str] = []
        async with aiomqtt.Client(host, port, identifier="aio-sub", timeout=LIMIT) as sub:
            await sub.subscribe("a/#", qos=1)
            async with aiomqtt.Client(host, port, identifier="aio-pub", timeout=LIMIT) as pub:
                await asyncio.gather(*(pub.publish(f"a/{i}", p, qos=1) for i, p in enumerate(sent)))

                async def take() -> None:
                    async for m in sub.messages:
                        got.append(sha(m.payload))
                        if len(got) == len(sent):
                            return

                await asyncio.wait_for(take(), LIMIT)
                ended = "no"
                async with aiomqtt.Client(host, port, identifier="aio-sub", timeout=LIMIT):
                    try:
                        await asyncio.wait_for(sub.messages.__anext__(), LIMIT)
                    except aiomqtt.MqttError as e:
                        ended = [type(e).__name__, str(e)]
            try:
                await sub.publish("a/x", b"after", qos=1)
                after = "published"
            except aiomqtt.MqttError as e:
                after = type(e).__name__
        return {"whole": sorted(got) == sorted(sha(p) for p in sent), "ended": ended, "after": after}

    return asyncio.run(run())


def refused() -> dict:
    """A port nobody listens on."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="refused")
    try:
        c.connect(host, 1, 60)
        return {"refused": "connected"}
    except OSError as e:
        return {"refused": [type(e).__name__, e.errno]}


if name == "willing":
    willing()
else:
    out({"messages": messages, "will": will, "aio": aio, "refused": refused}[name]())
