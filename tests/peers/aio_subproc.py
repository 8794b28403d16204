"""The thirteenth sweep's asyncio program: subprocesses and sockets in one loop, for
tests/interop/test_programs13.py (issue 16).

    python aio_subproc.py HOST PORT

The loop runs three children (each a Python that connects to the kernel peer itself, and so runs
on usnet too under `usnet run`: the environment goes to children) through
asyncio.create_subprocess_exec with pipes, while the parent's own connection streams 1 MB both
ways; then a child that is killed while it waits, and one whose stdin the parent writes to EOF.
What it prints (one JSON line) is compared between usnet and the kernel (but for "on": which
module's socket each child had).
"""

import asyncio
import hashlib
import sys

from peerout import LIMIT, MB, out, sha

host, port = sys.argv[1], int(sys.argv[2])
CHILD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"c" * 100000)
s.shutdown(socket.SHUT_WR)
got = b""
while (b := s.recv(65536)):
    got += b
print(got.decode().strip(), type(s).__module__.split(".")[0])
"""


async def stream() -> list:
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), LIMIT)
    data = bytes(range(256)) * (MB // 256)
    w.write(data)
    await w.drain()
    w.write_eof()
    got = await asyncio.wait_for(r.read(), LIMIT)
    w.close()
    await w.wait_closed()
    return [got.decode().strip() == hashlib.sha256(data).hexdigest()]


async def child() -> list:
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, host, str(port),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    o, e = await asyncio.wait_for(p.communicate(), LIMIT)
    return [p.returncode, o.decode().split(), e.decode()[-300:]]


async def main() -> None:
    results = await asyncio.gather(stream(), *(child() for _ in range(3)))
    killed = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    killed.kill()
    rc = await asyncio.wait_for(killed.wait(), LIMIT)
    cat = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys, hashlib; "
                                               "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
                                               stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    blob = b"z" * (3 * MB)
    o, _ = await asyncio.wait_for(cat.communicate(blob), LIMIT)
    children = [[code, said[0], err] for code, said, err in results[1:]]
    on = sorted({said[1] for _, said, _ in results[1:]})
    out({"stream": results[0], "children": children, "on": on, "killed": rc, "stdin": o.decode().strip() == sha(blob)})


asyncio.run(main())
