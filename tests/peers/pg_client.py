"""The thirteenth sweep's PostgreSQL programs: pg8000 (pure Python, its own protocol code on
socket.create_connection) against a real postgres on the kernel's side, for
tests/interop/test_programs13.py (issue 16).

    python pg_client.py NAME HOST PORT

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import io
import sys

import pg8000.dbapi
import pg8000.native
from peerout import LIMIT, MB, out, sha

name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


def conn(**kw) -> pg8000.native.Connection:
    return pg8000.native.Connection("postgres", host=host, port=port, database="postgres", timeout=LIMIT, **kw)


def err(e: BaseException) -> list:
    """An error as the program saw it: its type's qualified name and, for the server's, its code."""
    code = e.args[0].get("C") if e.args and isinstance(e.args[0], dict) else None
    return [f"{type(e).__module__}.{type(e).__qualname__}", code]


def big() -> dict:
    """Four 1 MB bytea values in and out (their SHA-256), COPY of 20,000 rows in and out."""
    c = conn()
    c.run("CREATE TEMP TABLE b (k int, v bytea)")
    vals = [bytes([i]) * MB for i in range(4)]
    for i, v in enumerate(vals):
        c.run("INSERT INTO b VALUES (:k, :v)", k=i, v=v)
    back = [sha(r[0]) == sha(v) for r, v in zip(c.run("SELECT v FROM b ORDER BY k"), vals)]
    c.run("CREATE TEMP TABLE t (k int, s text)")
    rows = "".join(f"{i}\tline {i} {'x' * (i % 50)}\n" for i in range(20000))
    c.run("COPY t FROM STDIN", stream=io.StringIO(rows))
    got = io.StringIO()
    c.run("COPY t TO STDOUT", stream=got)
    n = c.run("SELECT count(*), sum(k) FROM t")[0]
    c.close()
    return {"back": back, "copy": [sorted(got.getvalue().splitlines()) == sorted(rows.splitlines()), n]}


def notify() -> dict:
    """LISTEN on one connection, NOTIFY from another: the notifications arrive with the
    listener's next query (pg8000 reads them as they come)."""
    a, b = conn(), conn()
    a.run("LISTEN ch")
    for i in range(3):
        b.run(f"NOTIFY ch, 'n{i}'")
    a.run("SELECT 1")
    got = [list(n[1:]) for n in a.notifications]
    a.close()
    b.close()
    return {"notes": got}


def terminated() -> dict:
    """A connection the server ends (pg_terminate_backend from another): its next query's error,
    as pg8000 reports it; the admin connection goes on."""
    a, admin = conn(), conn()
    pid = a.run("SELECT pg_backend_pid()")[0][0]
    found = {"terminate": admin.run("SELECT pg_terminate_backend(:p, 5000)", p=pid)[0][0]}
    try:
        a.run("SELECT 1")
        found["next"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["next"] = err(e)
    found["admin"] = admin.run("SELECT 2")[0][0]
    admin.close()
    return found


def timeouts() -> dict:
    """A query longer than the socket's timeout (0.5 s): pg8000's error; a statement_timeout
    cancelled by the server (57014) on a connection that goes on."""
    found = {}
    c = pg8000.native.Connection("postgres", host=host, port=port, database="postgres", timeout=0.5)
    try:
        c.run("SELECT pg_sleep(3)")
        found["socket"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["socket"] = err(e)
    d = conn()
    d.run("SET statement_timeout = 200")
    try:
        d.run("SELECT pg_sleep(3)")
        found["statement"] = "answered"
    except Exception as e:  # (the error is what we report)
        found["statement"] = err(e)
    found["after"] = d.run("SELECT 3")[0][0]
    d.close()
    return found


def short() -> dict:
    """60 short connections through the DB-API, each one insert and a commit; then how many
    rows, and how many client backends the server still has besides ours. 60: more than the
    server's max_connections (50, tests/interop/test_programs13.py), so a backend a close
    left behind would show as a refused connection."""
    setup = conn()
    setup.run("CREATE TABLE IF NOT EXISTS s (k int)")
    setup.run("TRUNCATE s")
    for i in range(60):
        c = pg8000.dbapi.connect("postgres", host=host, port=port, database="postgres", timeout=LIMIT)
        cur = c.cursor()
        cur.execute("INSERT INTO s VALUES (%s)", (i,))
        c.commit()
        c.close()
    n = setup.run("SELECT count(*), sum(k) FROM s")[0]
    left = None
    for _ in range(int(LIMIT / 0.05)):  # (a backend ends a moment after its client's Terminate)
        left = setup.run("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")[0][0]
        if left == 1:
            break
        setup.run("SELECT pg_sleep(0.05)")
    setup.run("DROP TABLE s")
    setup.close()
    return {"rows": n, "backends": left}


def refused() -> dict:
    """A port nobody listens on."""
    try:
        pg8000.native.Connection("postgres", host=host, port=1, timeout=LIMIT)
        return {"refused": "connected"}
    except Exception as e:  # (the error is what we report)
        return {"refused": [err(e), str(e.__cause__ and type(e.__cause__).__name__)]}


out({"big": big, "notify": notify, "terminated": terminated, "timeouts": timeouts, "short": short,
     "refused": refused}[name]())
