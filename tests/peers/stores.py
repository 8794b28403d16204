"""The eleventh sweep's programs: redis-py (sync and redis.asyncio) and pymemcache (sync) against real
servers (redis-server, memcached) on the kernel's side, for tests/interop/test_programs11.py
(issue 16).

    python stores.py NAME sync|async HOST PORT [ARGS...]

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import asyncio
import os
import select
import socket
import sys
import threading
import time

import redis
import redis.asyncio as aredis
from peerout import LIMIT, MB, out, sha
from redis.asyncio.retry import Retry as ARetry
from redis.backoff import NoBackoff
from redis.retry import Retry

name, mode, host, port, args = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]


def err(e: BaseException) -> list:
    """An exception as the program saw it: its type's qualified name and its message."""
    return [f"{type(e).__module__}.{type(e).__qualname__}", str(e)]


def no_retry(retries: int = 0, kind: type = Retry):
    """No retries (or `retries`, at once): an error the connection met is the caller's (redis-py
    retries 10 times by default, with backoff)."""
    return kind(NoBackoff(), retries)


def values() -> list[bytes]:
    """Four 1 MB values, random (a wrong byte anywhere shows in the SHA-256)."""
    return [os.urandom(MB) for _ in range(4)]


def blocked(admin, n: int) -> bool:
    """Wait (bounded) until `n` clients are blocked in the server (a BLPOP arrived)."""
    for _ in range(int(LIMIT / 0.005)):
        if admin.info("clients")["blocked_clients"] == n:
            return True
        time.sleep(0.005)  # (a poll for the server's state: nothing here can wake us)
    return False


async def ablocked(admin, n: int) -> bool:
    for _ in range(int(LIMIT / 0.005)):
        if (await admin.info("clients"))["blocked_clients"] == n:
            return True
        await asyncio.sleep(0.005)
    return False


def tcp_opts(sock) -> list:
    """What a library set on its socket: SO_KEEPALIVE, TCP_NODELAY (as a bool: Linux says 1, or
    any non-zero), TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, read back."""
    tcp = socket.IPPROTO_TCP
    return [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), bool(sock.getsockopt(tcp, socket.TCP_NODELAY)),
            *(sock.getsockopt(tcp, o) for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))]


def big_summary(vals: list[bytes], got: list, many: list, res: list, got_k: list) -> dict:
    """What `big` found: each 1 MB value back whole (GET, MGET); the pipeline's 1,000 answers (its
    last INCR, its SETs' True); the MULTI/EXEC's 1,000 GETs, each its key's value."""
    return {"get": [sha(g) == sha(v) for g, v in zip(got, vals)],
            "mget": [sha(g) == sha(v) for g, v in zip(many, vals)],
            "pipeline": [len(res), res[-1], sum(x is True for x in res)],
            "multi": [len(got_k), got_k[-1].decode(),
                      all(got_k[i] == (str(i % 500) * 10).encode() for i in range(1000))]}


# -- sync -----------------------------------------------------------------------------------------------


def big_sync() -> dict:
    """SET/GET of 1 MB values (sent whole, read whole), then a pipeline of 1,000 commands."""
    r = redis.Redis(host, port, socket_timeout=LIMIT, socket_keepalive=True, socket_keepalive_options={
        socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 4})
    r.flushall()  # (the same server for both runs)
    opts = tcp_opts(r.connection_pool._available_connections[0]._sock)
    vals = values()
    for i, v in enumerate(vals):
        r.set(f"big{i}", v)
    got = [r.get(f"big{i}") for i in range(len(vals))]
    many = r.mget([f"big{i}" for i in range(len(vals))])  # one answer of 4 MB
    with r.pipeline(transaction=False) as p:
        for i in range(500):
            p.set(f"k{i}", str(i) * 10)
            p.incr("counter")
        res = p.execute()
    with r.pipeline() as p:  # MULTI/EXEC
        for i in range(1000):
            p.get(f"k{i % 500}")
        got_k = p.execute()
    r.close()
    return {**big_summary(vals, got, many, res, got_k), "opts": opts}


def pubsub_sync() -> dict:
    """A subscriber's blocking get_message(timeout=...) and listen() while another connection
    publishes (a 1 MB message among them)."""
    r = redis.Redis(host, port, socket_timeout=LIMIT)
    p = r.pubsub()
    p.subscribe("ch")
    res: dict = {"subscribed": p.get_message(timeout=LIMIT)}
    t0 = time.monotonic()
    res["idle"] = p.get_message(timeout=0.3)  # nothing published: None after its timeout
    res["idle-waited"] = time.monotonic() - t0 >= 0.25
    big = os.urandom(MB)

    def publish() -> None:
        with redis.Redis(host, port, socket_timeout=LIMIT) as pub:
            for m in (b"one", big, b"two", b"stop"):
                pub.publish("ch", m)

    t = threading.Thread(target=publish)
    t.start()
    first = p.get_message(timeout=LIMIT)
    res["first"] = [first["type"], first["channel"].decode(), first["data"].decode()]
    rest = []
    for m in p.listen():
        rest.append([m["type"], sha(m["data"]) == sha(big) if len(m["data"]) == MB else m["data"].decode()])
        if m["data"] == b"stop":
            break
    t.join(LIMIT)
    res["rest"] = rest
    p.unsubscribe("ch")
    res["unsubscribed"] = p.get_message(timeout=LIMIT)["type"]
    p.close()
    r.close()
    res["subscribed"] = [res["subscribed"]["type"], res["subscribed"]["data"]]
    return res


def killed_idle_sync() -> dict:
    """The pool's idle connection closed by the server (CLIENT KILL): the next command, without
    retries, on a new connection (the pool saw the FIN: can_read); with retries, a pipeline at
    once after the kill."""
    admin = redis.Redis(host, port, socket_timeout=LIMIT)
    res = {}
    for kind in ("no-retry", "retry"):  # (a health check every command: redis-py's PING comes
        # amid its CLIENT SETINFO on connecting, and Redis 7.0's error for SETINFO fails it, kernel or not)
        kw = {"retry": no_retry()} if kind == "no-retry" else {}
        r = redis.Redis(host, port, socket_timeout=LIMIT, **kw)
        r.set("k", kind)
        cid = r.client_id()
        killed = admin.client_kill_filter(_id=cid)
        if kind == "no-retry":  # the FIN reached the pool's idle connection
            conn = r.connection_pool._available_connections[0]
            res["fin-seen"] = bool(select.select([conn._sock], [], [], LIMIT)[0])
        try:
            if kind == "retry":
                with r.pipeline(transaction=False) as p:
                    got = p.get("k").incr("n").execute()
                got = [got[0].decode(), got[1] > 0]
            else:
                got = r.get("k").decode()
        except redis.RedisError as e:
            got = err(e)
        res[kind] = [killed, got, r.client_id() != cid, len(r.connection_pool._available_connections)]
        r.close()
    admin.close()
    return res


def blpop_kill_sync() -> dict:
    """CLIENT KILL of a connection blocked in BLPOP: without retries its error; with redis-py's
    default retries, BLPOP again on a new connection, that gets the value pushed after."""
    admin = redis.Redis(host, port, socket_timeout=LIMIT)
    admin.delete("q")
    res = {}
    for kind in ("no-retry", "retry"):
        r = redis.Redis(host, port, **({"retry": no_retry()} if kind == "no-retry" else {}))
        cid = r.client_id()
        got: list = []
        t = threading.Thread(target=lambda r=r, got=got: got.append(_outcome(lambda: r.blpop(["q"], timeout=LIMIT))))
        t.start()
        res[kind + "-blocked"] = blocked(admin, 1)
        res[kind + "-killed"] = admin.client_kill_filter(_id=cid)
        if kind == "retry":
            res["reblocked"] = blocked(admin, 1)
            admin.lpush("q", "v")
        t.join(LIMIT)
        res[kind] = got[0] if got else "still blocked"
        r.close()
    admin.close()
    return res


def _outcome(f):
    try:
        v = f()
        return [x.decode() for x in v] if isinstance(v, (list, tuple)) else v
    except redis.RedisError as e:
        return err(e)


def timeouts_sync() -> dict:
    """socket_connect_timeout to a dead address (ARP unanswered), socket_timeout on a server that
    accepts and says nothing (args: the dead address, the silent port), a refused port; with no
    retries and with two: the error, and the time in timeouts (rounded)."""
    dead, silent = args[0], int(args[1])
    with redis.Redis(host, port, socket_timeout=LIMIT) as r:  # the process's first connection made:
        r.ping()  # under usnet its connector's setup (~50 ms) comes before the first timeout's wait
    res = {}
    for retries in (0, 2):
        for what, addr, kw in (("connect", (dead, port), {"socket_connect_timeout": 0.5}),
                               ("read", (host, silent), {"socket_timeout": 0.5}),
                               ("refused", (host, port + 1), {"socket_connect_timeout": 0.5})):
            r = redis.Redis(*addr, retry=no_retry(retries), **kw)
            t0 = time.monotonic()
            got = _outcome(r.ping)
            res[f"{what}-{retries}"] = [got, round((time.monotonic() - t0) / 0.5)]
            r.close()
    return res


def short_sync() -> dict:
    """200 short connections, one after another: each a client, an INCR, a close."""
    admin = redis.Redis(host, port, socket_timeout=LIMIT)
    admin.delete("short")
    before = admin.info("stats")["total_connections_received"]
    got = []
    for _ in range(200):
        with redis.Redis(host, port, socket_timeout=LIMIT) as r:
            got.append(r.incr("short"))
            r.connection_pool.disconnect()
    after = admin.info("stats")["total_connections_received"]
    res = {"incr": got == list(range(1, 201)), "connections": after - before,
           "clients": admin.info("clients")["connected_clients"]}
    admin.close()
    return res


def numsub(admin, n: int) -> bool:
    """Wait (bounded) until channel "ch" has `n` subscribers (a SUBSCRIBE arrived)."""
    for _ in range(int(LIMIT / 0.005)):
        if admin.pubsub_numsub("ch")[0][1] == n:
            return True
        time.sleep(0.005)  # (a poll for the server's state, as `blocked`)
    return False


def pubsub_kill_sync() -> dict:
    """A subscriber killed by the server (CLIENT KILL TYPE pubsub): its get_message reconnects and
    subscribes again (redis-py's PubSub.on_connect), then gets what is published after."""
    admin = redis.Redis(host, port, socket_timeout=LIMIT)
    r = redis.Redis(host, port, socket_timeout=LIMIT)
    p = r.pubsub()
    p.subscribe("ch")
    res: dict = {"subscribed": p.get_message(timeout=LIMIT)["type"]}
    res["killed"] = admin.client_kill_filter(_type="pubsub")
    got: list = []

    def take() -> None:
        for _ in range(5):
            m = p.get_message(timeout=LIMIT)
            got.append(m if m is None else [m["type"], m["data"] if isinstance(m["data"], int) else m["data"].decode()])
            if m is not None and m["type"] == "message":
                return

    t = threading.Thread(target=take)
    t.start()
    res["resubscribed"] = numsub(admin, 1)
    admin.publish("ch", "after")
    t.join(LIMIT)
    res["got"] = got
    p.close()
    r.close()
    admin.close()
    return res


# -- redis.asyncio --------------------------------------------------------------------------------------


async def big_async() -> dict:
    r = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    await r.flushall()
    vals = values()
    for i, v in enumerate(vals):
        await r.set(f"big{i}", v)
    got = [await r.get(f"big{i}") for i in range(len(vals))]
    many = await r.mget([f"big{i}" for i in range(len(vals))])
    async with r.pipeline(transaction=False) as p:
        for i in range(500):
            p.set(f"k{i}", str(i) * 10)
            p.incr("counter")
        res = await p.execute()
    async with r.pipeline() as p:
        for i in range(1000):
            p.get(f"k{i % 500}")
        got_k = await p.execute()
    # concurrent commands on the pool: 20 connections at once
    conc = await asyncio.gather(*(r.get(f"big{i % 4}") for i in range(20)))
    await r.aclose()
    return {**big_summary(vals, got, many, res, got_k),
            "gather": all(sha(g) == sha(vals[i % 4]) for i, g in enumerate(conc))}


async def pubsub_async() -> dict:
    r = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    p = r.pubsub()
    await p.subscribe("ch")
    sub = await p.get_message(timeout=LIMIT)
    res: dict = {"subscribed": [sub["type"], sub["data"]]}
    t0 = time.monotonic()
    res["idle"] = await p.get_message(timeout=0.3)
    res["idle-waited"] = time.monotonic() - t0 >= 0.25
    big = os.urandom(MB)

    async def publish() -> None:
        async with aredis.Redis(host=host, port=port, socket_timeout=LIMIT) as pub:
            for m in (b"one", big, b"two", b"stop"):
                await pub.publish("ch", m)

    t = asyncio.create_task(publish())
    first = await p.get_message(timeout=LIMIT)
    res["first"] = [first["type"], first["channel"].decode(), first["data"].decode()]
    rest = []
    async for m in p.listen():
        rest.append([m["type"], sha(m["data"]) == sha(big) if len(m["data"]) == MB else m["data"].decode()])
        if m["data"] == b"stop":
            break
    await asyncio.wait_for(t, LIMIT)
    res["rest"] = rest
    await p.unsubscribe("ch")
    res["unsubscribed"] = (await p.get_message(timeout=LIMIT))["type"]
    await p.aclose()
    await r.aclose()
    return res


async def pubsub_kill_async() -> dict:
    admin = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    r = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    p = r.pubsub()
    await p.subscribe("ch")
    res: dict = {"subscribed": (await p.get_message(timeout=LIMIT))["type"]}
    res["killed"] = await admin.client_kill_filter(_type="pubsub")
    got: list = []

    async def take() -> None:
        for _ in range(5):
            m = await p.get_message(timeout=LIMIT)
            got.append(m if m is None else [m["type"], m["data"] if isinstance(m["data"], int) else m["data"].decode()])
            if m is not None and m["type"] == "message":
                return

    t = asyncio.create_task(take())
    for _ in range(int(LIMIT / 0.005)):
        if (await admin.pubsub_numsub("ch"))[0][1] == 1:
            res["resubscribed"] = True
            break
        await asyncio.sleep(0.005)
    await admin.publish("ch", "after")
    await asyncio.wait_for(t, LIMIT)
    res["got"] = got
    await p.aclose()
    await r.aclose()
    await admin.aclose()
    return res


async def killed_idle_async() -> dict:
    admin = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    res = {}
    for kind in ("no-retry", "retry"):  # (a health check every command: redis-py's PING comes
        # amid its CLIENT SETINFO on connecting, and Redis 7.0's error for SETINFO fails it, kernel or not)
        kw = {"retry": no_retry(0, ARetry)} if kind == "no-retry" else {}
        r = aredis.Redis(host=host, port=port, socket_timeout=LIMIT, **kw)
        await r.set("k", kind)
        cid = await r.client_id()
        killed = await admin.client_kill_filter(_id=cid)
        if kind == "no-retry":  # the FIN reached the pool's idle connection (its reader at EOF)
            reader = r.connection_pool._available_connections[0]._reader
            for _ in range(int(LIMIT / 0.005)):
                if reader.at_eof():
                    break
                await asyncio.sleep(0.005)  # (a poll: the StreamReader has no wait for EOF alone)
            res["fin-seen"] = reader.at_eof()
        try:
            if kind == "retry":
                async with r.pipeline(transaction=False) as p:
                    got = await p.get("k").incr("n").execute()
                got = [got[0].decode(), got[1] > 0]
            else:
                got = (await r.get("k")).decode()
        except redis.RedisError as e:
            got = err(e)
        res[kind] = [killed, got, await r.client_id() != cid, len(r.connection_pool._available_connections)]
        await r.aclose()
    await admin.aclose()
    return res


async def blpop_kill_async() -> dict:
    admin = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    await admin.delete("q")
    res = {}
    for kind in ("no-retry", "retry"):
        r = aredis.Redis(host=host, port=port, **({"retry": no_retry(0, ARetry)} if kind == "no-retry" else {}))
        cid = await r.client_id()

        async def pop(r=r):
            try:
                return [x.decode() for x in await r.blpop(["q"], timeout=LIMIT)]
            except redis.RedisError as e:
                return err(e)

        t = asyncio.create_task(pop())
        res[kind + "-blocked"] = await ablocked(admin, 1)
        res[kind + "-killed"] = await admin.client_kill_filter(_id=cid)
        if kind == "retry":
            res["reblocked"] = await ablocked(admin, 1)
            await admin.lpush("q", "v")
        res[kind] = await asyncio.wait_for(t, LIMIT)
        await r.aclose()
    await admin.aclose()
    return res


async def timeouts_async() -> dict:
    dead, silent = args[0], int(args[1])
    async with aredis.Redis(host=host, port=port, socket_timeout=LIMIT) as r:  # (as timeouts_sync)
        await r.ping()
    res = {}
    for retries in (0, 2):
        for what, h, p, kw in (("connect", dead, port, {"socket_connect_timeout": 0.5}),
                               ("read", host, silent, {"socket_timeout": 0.5}),
                               ("refused", host, port + 1, {"socket_connect_timeout": 0.5})):
            r = aredis.Redis(host=h, port=p, retry=no_retry(retries, ARetry), **kw)
            t0 = time.monotonic()
            try:
                got = await r.ping()
            except redis.RedisError as e:
                got = err(e)
            res[f"{what}-{retries}"] = [got, round((time.monotonic() - t0) / 0.5)]
            await r.aclose()
    return res


async def short_async() -> dict:
    """200 short connections, 40 at a time."""
    admin = aredis.Redis(host=host, port=port, socket_timeout=LIMIT)
    await admin.delete("short")
    before = (await admin.info("stats"))["total_connections_received"]

    async def one() -> int:
        async with aredis.Redis(host=host, port=port, socket_timeout=LIMIT) as r:
            return await r.incr("short")

    got = []
    for _ in range(5):
        got += await asyncio.gather(*(one() for _ in range(40)))
    after = (await admin.info("stats"))["total_connections_received"]
    res = {"incr": sorted(got) == list(range(1, 201)), "connections": after - before,
           "clients": (await admin.info("clients"))["connected_clients"]}
    await admin.aclose()
    return res


# -- pymemcache -----------------------------------------------------------------------------------------


def mc_big() -> dict:
    """pymemcache: set/get of 1 MB values (the server's -I 2m), set_many/get_many of 1,000 keys,
    gets/cas, incr; with TCP_NODELAY and keepalive options set (their values read back)."""
    from pymemcache.client.base import Client, KeepaliveOpts

    c = Client((host, port), timeout=LIMIT, connect_timeout=LIMIT, no_delay=True,
               socket_keepalive=KeepaliveOpts(idle=30, intvl=5, cnt=4))
    c.flush_all()
    vals = values()
    for i, v in enumerate(vals):
        c.set(f"big{i}", v, noreply=False)
    got = [c.get(f"big{i}") for i in range(len(vals))]
    failed = c.set_many({f"k{i}": str(i).encode() * 10 for i in range(1000)}, noreply=False)
    many = c.get_many([f"k{i}" for i in range(1000)])
    c.set("n", b"0")
    v, token = c.gets("n")
    cas = [c.cas("n", b"5", token), c.cas("n", b"6", token)]
    incr = c.incr("n", 10)
    opts = tcp_opts(c.sock)
    c.close()
    return {"get": [sha(g) == sha(v) for g, v in zip(got, vals)], "set_many-failed": failed,
            "get_many": [len(many), all(many[f"k{i}"] == str(i).encode() * 10 for i in range(1000))],
            "gets": v.decode(), "cas": cas, "incr": incr, "opts": opts}


def mc_pool() -> dict:
    """A PooledClient (8 connections) shared by 8 threads, 200 incr each; then 200 short
    connections (a client, a get, a close)."""
    from pymemcache.client.base import Client, PooledClient

    c = PooledClient((host, port), timeout=LIMIT, connect_timeout=LIMIT, max_pool_size=8)
    c.set("n", b"0", noreply=False)

    def work() -> None:
        for _ in range(200):
            c.incr("n", 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT)
    n = int(c.get("n"))
    before = int(c.stats()[b"total_connections"])
    c.close()
    got = []
    for _ in range(200):
        one = Client((host, port), timeout=LIMIT, connect_timeout=LIMIT)
        got.append(one.get("n") == str(n).encode())
        one.close()
    after = Client((host, port), timeout=LIMIT)
    res = {"n": n, "short": all(got), "connections": int(after.stats()[b"total_connections"]) - before,
           "current": int(after.stats()[b"curr_connections"])}
    after.close()
    return res


def mc_timeouts() -> dict:
    """connect_timeout to a dead address, timeout on a silent server, a refused port: pymemcache's
    error (the socket's own: it wraps none) and the time in timeouts (rounded)."""
    from pymemcache.client.base import Client

    dead, silent = args[0], int(args[1])
    warm = Client((host, port), timeout=LIMIT)  # (as timeouts_sync: the first connection made)
    warm.version()
    warm.close()
    res = {}
    for what, addr, kw in (("connect", (dead, port), {"connect_timeout": 0.5}),
                           ("read", (host, silent), {"timeout": 0.5}),
                           ("refused", (host, port + 1), {"connect_timeout": 0.5})):
        c = Client(addr, **kw)
        t0 = time.monotonic()
        try:
            got = c.get("x")
        except Exception as e:  # (what pymemcache lets through: the socket's own errors)
            got = [type(e).__name__, getattr(e, "errno", None), str(e)]
        res[what] = [got, round((time.monotonic() - t0) / 0.5)]
        c.close()
    return res


PROGRAMS = {"big": (big_sync, big_async), "pubsub": (pubsub_sync, pubsub_async),
            "pubsub-kill": (pubsub_kill_sync, pubsub_kill_async),
            "killed-idle": (killed_idle_sync, killed_idle_async), "blpop-kill": (blpop_kill_sync, blpop_kill_async),
            "timeouts": (timeouts_sync, timeouts_async), "short": (short_sync, short_async),
            "mc-big": (mc_big, None), "mc-pool": (mc_pool, None), "mc-timeouts": (mc_timeouts, None)}

if name not in PROGRAMS:
    raise SystemExit(f"no program {name}")
sync, async_ = PROGRAMS[name]
out(sync() if mode == "sync" else asyncio.run(async_()))
