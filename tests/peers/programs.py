"""Ordinary standard-library (and PyPI) programs, unmodified, for tests/interop/test_programs.py.

    python programs.py NAME server BIND_IP      prints "port N" once it listens, then serves
    python programs.py NAME client PEER_IP PORT exits 0 once every check held

Each runs the same on kernel sockets and under `usnet run`; the test runs one side on each.
"""

import hashlib
import io
import sys
import tempfile
import threading

name, role, ip = sys.argv[1], sys.argv[2], sys.argv[3]
port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
DATA = (hashlib.sha256(b"usnet").hexdigest() * 2000).encode()  # 128 kB: several windows' worth


def listening(p: int) -> None:
    print(f"port {p}", flush=True)


if name == "ftp":  # pyftpdlib server (sendfile for RETR); ftplib client in passive and active mode
    if role == "server":
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import FTPServer

        auth = DummyAuthorizer()
        auth.add_user("u", "p", tempfile.mkdtemp(), perm="elradfmw")
        FTPHandler.authorizer = auth
        server = FTPServer((ip, 0), FTPHandler)
        listening(server.socket.getsockname()[1])
        server.serve_forever()
    else:
        import ftplib

        for passive in (True, False):  # active: the client listens, and PORTs its own address
            f = ftplib.FTP()
            f.connect(ip, port, timeout=20)
            f.login("u", "p")
            f.set_pasv(passive)
            f.storbinary("STOR a.bin", io.BytesIO(DATA))
            out = io.BytesIO()
            f.retrbinary("RETR a.bin", out.write)
            assert out.getvalue() == DATA, (passive, len(out.getvalue()))
            assert f.nlst() == ["a.bin"]
            f.quit()

elif name == "smtp":  # aiosmtpd server (asyncio); smtplib client
    if role == "server":
        from aiosmtpd.controller import Controller

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                ok = hashlib.sha256(envelope.content).hexdigest() == hashlib.sha256(MAIL).hexdigest()
                return "250 OK" if ok else "554 damaged"

        MAIL = b"Subject: t\r\n\r\n" + b"line\r\n" * 20000
        controller = Controller(Handler(), hostname=ip, port=8025)
        controller.start()
        listening(8025)
        threading.Event().wait()
    else:
        import smtplib

        with smtplib.SMTP(ip, port, timeout=20) as s:
            s.ehlo()
            assert s.sendmail("a@example.org", ["b@example.org"], b"Subject: t\r\n\r\n" + b"line\r\n" * 20000) == {}

elif name == "xmlrpc":
    if role == "server":
        from xmlrpc.server import SimpleXMLRPCServer

        server = SimpleXMLRPCServer((ip, 0), logRequests=False)
        server.register_function(lambda a, b: a + b, "add")
        server.register_function(lambda n: "x" * n, "big")
        listening(server.server_address[1])
        server.serve_forever()
    else:
        import xmlrpc.client

        proxy = xmlrpc.client.ServerProxy(f"http://{ip}:{port}/")
        assert proxy.add(2, 3) == 5
        assert proxy.big(300000) == "x" * 300000

elif name == "mpconn":  # multiprocessing.connection: detaches the socket, then os.read/os.write
    from multiprocessing.connection import Client, Listener

    if role == "server":
        with Listener((ip, 0), family="AF_INET", authkey=b"k") as listener:
            listening(listener.address[1])
            while True:  # until the test stops it
                with listener.accept() as c:
                    while True:
                        try:
                            m = c.recv()
                        except EOFError:
                            break
                        c.send(m)
    else:
        for _ in range(2):
            with Client((ip, port), family="AF_INET", authkey=b"k") as c:
                c.send({"a": 1})
                assert c.recv() == {"a": 1}
                c.send(DATA)
                assert c.recv() == DATA
else:
    sys.exit(f"no program {name!r}")
