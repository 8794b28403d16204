"""The fifteenth sweep's asyncio SSH programs: asyncssh (pure Python on the asyncio loop: under
`usnet run`, usnet's loop, transports and listeners) against a real OpenSSH sshd on the kernel's
side, for tests/interop/test_programs15.py (issue 16).

    python asyncssh_client.py NAME HOST PORT KEY KNOWN_HOSTS [ECHO_PORT]

KEY is the client's private key (authorised by the sshd), KNOWN_HOSTS holds the sshd's host key;
ECHO_PORT a kernel echo server's on HOST. Each runs the same on kernel sockets and under `usnet
run`; what it checks must hold on both, and what it prints (one JSON line) the test compares.
"""

import asyncio
import os
import sys
import tempfile

import asyncssh
from peerout import LIMIT, MB, out, sha

name, host, port, key, known, args = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5],
                                      sys.argv[6:])


def connect(**kw):
    return asyncssh.connect(host, port, username="root", client_keys=[key], known_hosts=known, agent_path=None,
                            connect_timeout=LIMIT, **kw)


async def exec_() -> dict:
    """`cat` fed 1 MB of random, its stdout back whole; `seq` writing 1.3 MB; a command that
    writes to stderr and exits 7; four sessions at once on one connection."""
    async with connect() as c:
        data = os.urandom(MB)
        cat = await c.run("cat", input=data, encoding=None, timeout=LIMIT)
        seq = await c.run("seq 200000", encoding=None, timeout=LIMIT)
        bad = await c.run("echo oops >&2; exit 7", timeout=LIMIT)
        many = await asyncio.gather(*(c.run(f"head -c {n * 100000} /dev/zero | wc -c", timeout=LIMIT)
                                      for n in range(1, 5)))
    want = "".join(f"{i}\n" for i in range(1, 200001)).encode()
    return {"cat": sha(cat.stdout) == sha(data), "seq": sha(seq.stdout) == sha(want),
            "bad": [bad.exit_status, bad.stderr], "many": [r.stdout.strip() for r in many]}


async def sftp() -> dict:
    """SFTP put and get of a 4 MB file (its SHA-256 both ways), a listing, a missing file's error."""
    with tempfile.TemporaryDirectory() as d:
        src, back = os.path.join(d, "src"), os.path.join(d, "back")
        data = os.urandom(4 * MB)
        with open(src, "wb") as f:
            f.write(data)
        remote = os.path.join(d, "remote")  # (the sshd runs on this machine: a path of ours serves)
        async with connect() as c, c.start_sftp_client() as s:
            await s.put(src, remote)
            await s.get(remote, back)
            listing = sorted(await s.listdir(d))
            try:
                await s.stat(os.path.join(d, "missing"))
                missing = "found"
            except asyncssh.SFTPNoSuchFile as e:
                missing = type(e).__name__
        with open(back, "rb") as f:
            return {"same": sha(f.read()) == sha(data), "listing": listing, "missing": missing}


async def forward() -> dict:
    """A local port forward: asyncssh listens on 127.0.0.1 (usnet's loopback under `usnet run`),
    each connection to it goes through the sshd to the kernel's echo; three connections at once,
    1 MB each way and a half-close each. Then a direct-tcpip channel (open_connection) the same way."""
    echo = int(args[0])

    async def through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        data = os.urandom(MB)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), LIMIT)  # (to the echo's EOF after ours)
        writer.close()
        return sha(got) == sha(data)

    async with connect() as c:
        listener = await c.forward_local_port("127.0.0.1", 0, host, echo)
        lport = listener.get_port()
        ends = [await asyncio.open_connection("127.0.0.1", lport) for _ in range(3)]
        forwarded = await asyncio.gather(*(through(r, w) for r, w in ends))
        listener.close()
        await listener.wait_closed()
        try:
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lport), LIMIT)
            after = "connected"
        except OSError as e:
            after = type(e).__name__
        remote = await remote_forward(c, through)
        r, w = await c.open_connection(host, echo)
        data = os.urandom(MB)
        w.write(data)
        w.write_eof()
        got = b""
        for _ in range(4 * MB):
            b = await asyncio.wait_for(r.read(1 << 16), LIMIT)
            if not b:
                break
            got += b
        w.close()
    return {"forwarded": forwarded, "after_close": after, "remote": remote, "direct": sha(got) == sha(data)}


async def remote_forward(c: asyncssh.SSHClientConnection, through) -> list[bool]:
    """A remote port forward: the sshd listens on HOST (the kernel's side), each connection to it
    comes back over SSH to this program, which connects it to an echo of its own on 127.0.0.1
    (asyncio's start_server: usnet's loopback under `usnet run`); two connections made to the sshd's
    port from here, 1 MB each way through the whole loop."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(4 * MB):
            b = await reader.read(1 << 16)
            if not b:
                break
            writer.write(b)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    local = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with local:
        lport = local.sockets[0].getsockname()[1]
        listener = await c.forward_remote_port(host, 0, "127.0.0.1", lport)
        ends = [await asyncio.open_connection(host, listener.get_port()) for _ in range(2)]
        ok = await asyncio.gather(*(through(r, w) for r, w in ends))
        listener.close()
        await listener.wait_closed()
    return ok


async def refused() -> dict:
    """A port nobody listens on."""
    try:
        await asyncssh.connect(host, 1, username="root", known_hosts=None, connect_timeout=LIMIT)
        return {"refused": "connected"}
    except OSError as e:
        return {"refused": [type(e).__name__, e.errno]}


async def server() -> dict:
    """asyncssh's server (`asyncssh.listen` on HOST: usnet's listener under `usnet run`) and
    OpenSSH's `ssh` (the kernel's sockets) as its clients, four at once: each sends 1 MB on stdin,
    the server answers its SHA-256 and 512 KB, and exits 5. KEY and KNOWN_HOSTS are not used:
    the keys are made here."""
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        host_key, client_key = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
        client_path, known_path = os.path.join(d, "client"), os.path.join(d, "known")
        client_key.write_private_key(client_path)
        os.chmod(client_path, 0o600)

        async def handle(process: asyncssh.SSHServerProcess) -> None:
            got = b""
            for _ in range(4 * MB):
                b = await process.stdin.read(1 << 16)
                if not b:
                    break
                got += b
            process.stdout.write(sha(got).encode() + b"\n" + bytes(range(256)) * 2048)
            process.exit(5)

        srv = await asyncssh.listen(host, 0, server_host_keys=[host_key], encoding=None,
                                    authorized_client_keys=asyncssh.import_authorized_keys(
                                        client_key.export_public_key().decode()), process_factory=handle)
        sport = srv.get_port()
        with open(known_path, "w") as f:
            f.write(f"[{host}]:{sport} {host_key.export_public_key().decode()}")
        cmd = ["ssh", "-F", "/dev/null", "-p", str(sport), "-i", client_path, "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_path}", "-o", "StrictHostKeyChecking=yes",
               f"root@{host}", "anything"]
        datas = [os.urandom(MB) for _ in range(4)]

        async def one(data: bytes) -> list:
            p = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE)
            outp, _err = await asyncio.wait_for(p.communicate(data), LIMIT)
            first, _, rest = outp.partition(b"\n")
            return [p.returncode, first.decode() == sha(data), rest == bytes(range(256)) * 2048]

        got = await asyncio.gather(*(one(x) for x in datas))
        srv.close()
        await srv.wait_closed()
    return {"clients": got}


out(asyncio.run({"exec": exec_, "sftp": sftp, "forward": forward, "server": server,
                 "refused": refused}[name]()))
