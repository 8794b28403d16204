"""A third sweep of unmodified programs and libraries on usnet against kernel peers (issue 16).

dnspython (its stub resolver, dns.query over UDP and TCP, the asyncio resolver, a truncated answer
asked again over TCP, the timeout against a server that never answers) against dnsmasq; the
logging module's network handlers (SocketHandler over TCP, DatagramHandler and SysLogHandler over
UDP) sending to kernel receivers; socketserver's UDP servers and http.server over HTTPS serving
kernel clients (curl); socket.sendfile, loop.sock_sendfile and loop.sendfile of a real file, and
loop.sock_sendto/sock_recvfrom; pip downloading a wheel from a kernel http.server's simple index.

Each program (tests/peers/programs3.py) runs under `usnet run` and, as the reference, on the
kernel's sockets: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import PEERS
from tests.interop.test_names import BIG, ask_udp, need_dnsmasq
from tests.interop.test_patch import LIMIT, child_env, started, stop, usnetd_path  # noqa: F401  (a fixture)

pytestmark = pytest.mark.privileged
PROGRAM = str(PEERS / "programs3.py")


def _command(on_usnet: bool, *args: str) -> list[str]:
    program = [sys.executable, "-u", PROGRAM, *args]
    return [sys.executable, "-m", "usnet", "run", "--", *program] if on_usnet else program


def _kernel_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}


def _run(path: str, on_usnet: bool, *args: str) -> str:
    """The program's output (its last line), on usnet or on the kernel; it must exit 0."""
    got = subprocess.run(_command(on_usnet, *args), capture_output=True, timeout=LIMIT,
                         env=child_env(path) if on_usnet else _kernel_env())
    assert got.returncode == 0, ("usnet" if on_usnet else "kernel", got.stderr.decode()[-3000:])
    return got.stdout.decode().strip().split("\n")[-1]


def _heard_from(s: socket.socket) -> set[str]:
    """The source addresses of the datagrams waiting on kernel socket `s` (drained)."""
    s.setblocking(False)
    got = set()
    for _ in range(1000):
        try:
            got.add(s.recvfrom(65536)[1][0])
        except BlockingIOError:
            return got
    return got


@pytest.fixture
def dnsmasq(usnetd_path):
    """dnsmasq on the kernel's side of the TAP: www (A and AAAA), alias (CNAME), nx.test (NXDOMAIN)
    and big (BIG A records, truncated over UDP). Yields its address."""
    _, _, host_ip = usnetd_path
    x = host_ip.split(".")[1]
    proc = subprocess.Popen(
        [need_dnsmasq(), "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
         "--user=root", "--bind-interfaces", f"--listen-address={host_ip}", "--port=53", "--address=/nx.test/",
         f"--host-record=www.usnet.test,10.{x}.0.7,fd00:{x}::7", "--cname=alias.usnet.test,www.usnet.test",
         *[f"--host-record=big.usnet.test,10.{x}.1.{i}" for i in range(1, BIG + 1)]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(50):
            if ask_udp((host_ip, 53), "www.usnet.test", 0.2) is not None or proc.poll() is not None:
                break
        assert ask_udp((host_ip, 53), "www.usnet.test", 1.0) is not None, "dnsmasq did not start"
        yield host_ip
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_dnspython_resolves_as_on_the_kernel(usnetd_path, dnsmasq):  # noqa: F811  (the fixture imported above)
    """dnspython's Resolver, dns.query.udp/tcp, udp_with_fallback and dns.asyncresolver on usnet's
    asyncio loop find what they find on the kernel; a silent server costs dns.exception.Timeout in
    about the timeout (the program checks the time), and the resolver's lifetime LifetimeTimeout."""
    pytest.importorskip("dns")
    path, usnet_ip, host_ip = usnetd_path
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # hears the queries, never answers
    silent.bind((host_ip, 0))
    with silent:
        port = str(silent.getsockname()[1])
        ours = _run(path, True, "dns", dnsmasq, port)
        assert _heard_from(silent) == {usnet_ip}  # the queries did go out through usnet
        theirs = _run(path, False, "dns", dnsmasq, port)
        assert _heard_from(silent) == {host_ip}
    assert ours == theirs
    found = json.loads(ours)
    assert found["big"] == BIG and found["big-fallback"] == [True, BIG] and found["big-udp"][0] is True
    assert found["silent"] == found["async-silent"] == "Timeout"
    assert found["silent-resolver"] == "LifetimeTimeout"
