"""The thirteenth sweep's programs: Twisted, on its own reactor (epoll), for
tests/interop/test_programs13.py (issue 16).

    python twisted_peer.py NAME HOST PORT [ARGS...]

Clients (NAME client-*) talk to a kernel peer the test runs; servers (NAME serve-*) print
"port N" and serve the test's kernel clients until SIGTERM, then print what they saw. Each runs
the same on kernel sockets and under `usnet run`; what it prints (one JSON line) is compared.
"""

import hashlib
import sys

from peerout import LIMIT, MB, out, sha
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

name, host, port, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]


def why(reason) -> str:
    """A failure as the program saw it: its exception's class in twisted.internet.error."""
    return type(reason.value).__name__


@implementer(IHalfCloseableProtocol)
class Collect(protocol.Protocol):
    """Takes what comes to its end; says how the read side and the connection ended."""

    def __init__(self) -> None:
        self.got = hashlib.sha256()
        self.n = 0
        self.read_end = None
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.got.update(data)
        self.n += len(data)

    def readConnectionLost(self) -> None:
        self.read_end = "eof"
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.done.callback([self.n, self.got.hexdigest(), self.read_end, why(reason)])


def connect(proto: protocol.Protocol, to_port: int = port, to_host: str = host, timeout: float = LIMIT):
    ep = endpoints.TCP4ClientEndpoint(reactor, to_host, to_port, timeout=timeout)
    return endpoints.connectProtocol(ep, proto)


async def client_halfclose(payload: bytes) -> dict:
    """2 MB written at once (Twisted buffers what the socket does not take), then
    loseWriteConnection: the peer's answer (the SHA-256 of what it got) read to its end."""
    p = Collect()
    await connect(p)
    p.transport.write(payload)
    p.transport.loseWriteConnection()
    n, _digest, read_end, end = await p.done
    return {"n": n, "read-end": read_end, "end": end}


async def client_reset() -> dict:
    """The peer sends 100 KB and resets (SO_LINGER 0): what arrived before, and ConnectionLost."""
    p = Collect()
    await connect(p)
    p.transport.write(b"go\n")
    _n, _digest, read_end, end = await p.done
    return {"reset-end": end, "reset-read-end": read_end}


async def client_abort() -> dict:
    """abortConnection once the peer answered a line: the peer reads a reset (the test asks it)."""
    p = Collect()
    await connect(p)
    p.transport.write(b"abort\n")
    for _ in range(int(LIMIT / 0.01)):  # (until its answer came: the reactor reads it)
        if p.n:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    p.transport.abortConnection()
    end = (await p.done)[3]
    q = Collect()
    await connect(q)
    q.transport.write(b"what\n")
    q.transport.loseWriteConnection()
    await q.done
    return {"abort-end": end}


async def client_failures(dead: str) -> dict:
    """A refused port, and an address of the link nobody has with a 1 s timeout."""
    found = {}
    for key, h, p, t in (("refused", host, 1, LIMIT), ("timeout", dead, port, 1.0)):
        try:
            await connect(Collect(), p, h, t)
            found[key] = "connected"
        except Exception as e:  # (the error is what we report)
            found[key] = type(e).__name__
    return found


class Echo(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list = []
        self.refused = 0
        self.stopped = False
        self.wait: defer.Deferred | None = None

    def datagramReceived(self, data: bytes, addr) -> None:
        self.got.append([len(data), sha(data)])
        if self.wait is not None:
            d, self.wait = self.wait, None
            d.callback(None)

    def connectionRefused(self) -> None:
        self.refused += 1
        self._wake()

    def stopProtocol(self) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        if self.wait is not None:
            d, self.wait = self.wait, None
            d.callback(None)


async def client_udp(closed: int) -> dict:
    """listenUDP, datagrams to a kernel echo (unconnected, then connected), then a connected
    transport to a closed port. The ICMP port unreachable makes the socket's error pending: Linux
    polls EPOLLERR (with EPOLLOUT, without EPOLLIN), and Twisted's epoll reactor takes that for a
    disconnection: the port stops (stopProtocol), connectionRefused is not called."""
    p = Echo()
    t = reactor.listenUDP(0, p)
    for size in (1, 1400, 8000):
        p.wait = defer.Deferred()
        t.write(bytes(size), (host, port))
        await p.wait.addTimeout(LIMIT, reactor)
    t.connect(host, port)
    p.wait = defer.Deferred()
    t.write(b"x" * 100)
    await p.wait.addTimeout(LIMIT, reactor)
    await t.stopListening()
    q = Echo()
    u = reactor.listenUDP(0, q)
    u.connect(host, closed)
    q.wait = defer.Deferred()
    u.write(b"anyone?")
    await q.wait.addTimeout(LIMIT, reactor)
    stopped = q.stopped
    if not stopped:
        await u.stopListening()
    return {"echo": p.got, "refused": q.refused, "stopped": stopped}


@implementer(IHalfCloseableProtocol)
class SumServer(protocol.Protocol):
    """Reads to the client's half-close, answers the SHA-256 of it, closes."""

    def connectionMade(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def dataReceived(self, data: bytes) -> None:
        self.h.update(data)
        self.n += len(data)

    def readConnectionLost(self) -> None:
        self.factory.seen.append(self.n)
        self.transport.write(self.h.hexdigest().encode() + b"\n")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.factory.ends.append(why(reason))
        if len(self.factory.ends) == self.factory.count:
            reactor.stop()


def serve_sum(count: int) -> None:
    """Serves `count` connections, then stops and says how each ended."""
    f = protocol.Factory.forProtocol(SumServer)
    f.seen, f.ends, f.count = [], [], count
    lp = reactor.listenTCP(port, f, interface=host)
    print(f"port {lp.getHost().port}", flush=True)
    reactor.callLater(LIMIT * 2, reactor.stop)
    reactor.run()
    out({"seen": sorted(f.seen), "ends": sorted(f.ends)})


def main() -> None:
    if name.startswith("serve-"):
        {"serve-sum": serve_sum}[name](int(args[0]))
        return
    payload = bytes(range(256)) * (2 * MB // 256)

    async def run(_reactor) -> None:
        if name == "client-tcp":
            found = await client_halfclose(payload)
            found.update(await client_reset())
            found.update(await client_abort())
            found.update(await client_failures(args[0]))
        elif name == "client-udp":
            found = await client_udp(int(args[0]))
        out(found)

    task.react(lambda r: defer.ensureDeferred(run(r)))


if __name__ == "__main__":
    main()
