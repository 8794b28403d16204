"""The fifteenth sweep's asyncio PostgreSQL programs: asyncpg (its protocol in Cython on the
loop's transports: under `usnet run`, usnet's loop and transports) against a real postgres on the
kernel's side, for tests/interop/test_programs15.py (issue 16).

    python asyncpg_client.py NAME HOST PORT

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import asyncio
import sys

import asyncpg
from peerout import LIMIT, MB, out, sha

name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def conn() -> asyncpg.Connection:
    return await asyncpg.connect(host=host, port=port, user="postgres", database="postgres", timeout=LIMIT,
                                 ssl=False)


def err(e: BaseException) -> list:
    """An error as the program saw it: its type's qualified name and, for the server's, its code."""
    return [f"{type(e).__module__}.{type(e).__qualname__}", getattr(e, "sqlstate", None)]


async def big() -> dict:
    """Four 1 MB bytea values in and out (their SHA-256); 20,000 rows by COPY in
    (copy_records_to_table) and out (copy_from_query into a callable), and a prepared statement's
    cursor walked in steps of 1,000."""
    c = await conn()
    await c.execute("CREATE TEMP TABLE b (k int, v bytea)")
    vals = [bytes([i + 1]) * MB for i in range(4)]
    await c.executemany("INSERT INTO b VALUES ($1, $2)", list(enumerate(vals)))
    back = [sha(r["v"]) == sha(v) for r, v in zip(await c.fetch("SELECT v FROM b ORDER BY k"), vals)]
    await c.execute("CREATE TEMP TABLE t (k int, s text)")
    rows = [(i, f"line {i} {'x' * (i % 50)}") for i in range(20000)]
    await c.copy_records_to_table("t", records=rows)
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await c.copy_from_query("SELECT k, s FROM t ORDER BY k", output=sink)
    copied = b"".join(chunks).decode().splitlines() == [f"{k}\t{s}" for k, s in rows]
    walked = 0
    async with c.transaction():
        cur = await (await c.prepare("SELECT k FROM t ORDER BY k")).cursor()
        for _ in range(30):
            got = await cur.fetch(1000)
            if not got:
                break
            walked += sum(r["k"] for r in got)
    n = list(await c.fetchrow("SELECT count(*), sum(k) FROM t"))
    seen = await c.fetchval("SELECT host(inet_client_addr())")  # (the server's view: usnet's address)
    await c.close()
    return {"back": back, "copy": [copied, n], "walked": walked, "from": seen}


async def notify() -> dict:
    """add_listener: notifications arrive with no query of the listener's (the loop reads its
    idle connection when the server writes), in order, with the payload; after remove_listener,
    nothing more comes, and a query of the listener still answers."""
    a, b = await conn(), await conn()
    got: list[list[str]] = []
    three = asyncio.Event()

    def on(_c, _pid, channel: str, payload: str) -> None:
        got.append([channel, payload])
        if len(got) == 3:
            three.set()

    await a.add_listener("ch", on)
    for i in range(3):
        await b.execute(f"NOTIFY ch, 'n{i}'")
    await asyncio.wait_for(three.wait(), LIMIT)
    await a.remove_listener("ch", on)
    await b.execute("NOTIFY ch, 'late'")
    after = await a.fetchval("SELECT 7")
    await a.close()
    await b.close()
    return {"notes": got, "after": after}


async def cancelled() -> dict:
    """A query's timeout: asyncpg sends a CancelRequest on a connection of its own and waits for
    the first one's answer; the connection goes on. A task cancelled in a query: the same. A
    statement_timeout the server enforces: its error (57014)."""
    c = await conn()
    found = {}
    try:
        await c.fetchval("SELECT pg_sleep(5)", timeout=0.3)
        found["timeout"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["timeout"] = err(e)
    found["after_timeout"] = await c.fetchval("SELECT 1")
    task = asyncio.ensure_future(c.fetchval("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.2)
    task.cancel()
    try:
        await task
        found["task"] = "answered"
    except asyncio.CancelledError:
        found["task"] = "cancelled"
    found["after_task"] = await c.fetchval("SELECT 2")
    await c.execute("SET statement_timeout = 200")
    try:
        await c.fetchval("SELECT pg_sleep(3)")
        found["statement"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["statement"] = err(e)
    found["after_statement"] = await c.fetchval("SELECT 3")
    found["backends"] = await c.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    await c.close()
    return found


async def terminated() -> dict:
    """A connection the server ends (pg_terminate_backend from another): the loop sees its EOF
    with no query pending (is_closed() turns True by itself), then its next query's error."""
    a, admin = await conn(), await conn()
    pid = await a.fetchval("SELECT pg_backend_pid()")
    found = {"terminate": await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)}
    for _ in range(int(LIMIT / 0.01)):
        if a.is_closed():
            break
        await asyncio.sleep(0.01)
    found["closed_idle"] = a.is_closed()
    try:
        await a.fetchval("SELECT 1")
        found["next"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["next"] = err(e)
    found["admin"] = await admin.fetchval("SELECT 2")
    await admin.close()
    return found


async def pool() -> dict:
    """A pool of 10 (min 2) under 200 queries 40 at a time, each a 64 KB text back whole; closed,
    the server has no backend of it left."""
    p = await asyncpg.create_pool(host=host, port=port, user="postgres", database="postgres", min_size=2,
                                  max_size=10, timeout=LIMIT, ssl=False)
    sem = asyncio.Semaphore(40)

    async def one(i: int) -> bool:
        async with sem, p.acquire() as c:
            v = await c.fetchval("SELECT repeat($1::text, 65536)", chr(65 + i % 26))
            return v == chr(65 + i % 26) * 65536

    ok = await asyncio.gather(*(one(i) for i in range(200)))
    size = p.get_size()
    await p.close()
    admin = await conn()
    left = None
    for _ in range(int(LIMIT / 0.05)):  # (a backend ends a moment after its client's Terminate)
        left = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        if left == 1:
            break
        await asyncio.sleep(0.05)
    await admin.close()
    return {"ok": sum(ok), "size": size, "backends": left}


async def tls() -> dict:
    """TLS asked for (asyncpg's SSLRequest, then `loop.start_tls` on the connection's transport):
    verified against the CA (the fourth argument) and the server's address; 1 MB bytea both ways
    over it; the server says the session is encrypted; a context that trusts nothing fails."""
    import ssl

    ctx = ssl.create_default_context(cafile=sys.argv[4])
    c = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres", timeout=LIMIT, ssl=ctx)
    v = bytes(range(256)) * 4096
    back = await c.fetchval("SELECT $1::bytea", v)
    on = await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    await c.close()
    try:
        await asyncpg.connect(host=host, port=port, user="postgres", timeout=LIMIT, ssl=ssl.create_default_context())
        untrusted = "connected"
    except ssl.SSLCertVerificationError as e:
        untrusted = [type(e).__name__, e.verify_code]
    return {"back": sha(back) == sha(v), "ssl": on, "untrusted": untrusted}


async def refused() -> dict:
    """A port nobody listens on."""
    try:
        await asyncpg.connect(host=host, port=1, user="postgres", timeout=LIMIT, ssl=False)
        return {"refused": "connected"}
    except Exception as e:  # (the error is what we report)
        return {"refused": [err(e), e.errno if isinstance(e, OSError) else None]}


out(asyncio.run({"big": big, "notify": notify, "cancelled": cancelled, "terminated": terminated, "pool": pool,
                 "tls": tls, "refused": refused}[name]()))
