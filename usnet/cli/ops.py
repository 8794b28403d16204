"""Operator commands of issue 20: `usnet capture`, `usnet metrics`, `usnet ss` and `usnet flows`.

Each prints one line to stderr and returns non-zero when it cannot do its job
(no usnetd, not root, a bad filter, an unwritable file), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, BinaryIO

__all__ = ["cmd_capture", "cmd_metrics", "cmd_ping", "cmd_ss", "echo_size", "fetch_metrics", "ping_summary", "ss_info",
           "ss_rows"]


def _connect(path: str) -> Any:
    from usnet.client import Client

    try:
        return Client.connect(path)
    except OSError as e:
        why = e.strerror or str(e)
        hint = ("it is root's: run this with sudo" if getattr(e, "errno", None) in (1, 13)
                else "start it with `usnet up`, or name its socket with --socket")
        print(f"usnet: cannot reach usnetd at {path} ({why}): {hint}", file=sys.stderr)
        return None


def _err(cmd: str, msg: str) -> int:
    print(f"usnet {cmd}: {msg}", file=sys.stderr)
    return 1


# -- capture ----------------------------------------------------------------------------------

def cmd_capture(args: argparse.Namespace) -> int:
    """Frames of a netif that match the filter, whole, to a pcap file or stdout (`-w -`).

    The filter runs in the domain before the copy; frames it matched that the
    monitor could not keep are counted by the domain and reported here. With a
    terminal on stderr, a live count.
    """
    from usnet.client.channel import ChannelError
    from usnet.drivers.pcap import PcapWriter
    from usnet.proto.pcapfilter import FilterError, parse

    text = " ".join(args.filter)
    try:
        parse(text)
    except FilterError as e:
        return _err("capture", f"bad filter: {e}")
    if args.count is not None and args.count <= 0:
        return _err("capture", "-c needs a positive number of frames")
    if args.seconds is not None and not args.seconds > 0:
        return _err("capture", "--seconds needs a positive number")
    client = _connect(args.socket)
    if client is None:
        return 1
    ch = client.open_monitor(args.netif, text)  # a refusal is the top-level handler's one line (usnet.cli.errors)
    to_stdout = args.write == "-"
    sink: BinaryIO
    try:
        sink = sys.stdout.buffer if to_stdout else open(args.write, "wb")  # noqa: SIM115
    except OSError as e:
        ch.close()
        return _err("capture", f"cannot write {args.write}: {e.strerror}")
    out = PcapWriter(sink)
    live = sys.stderr.isatty() and not args.quiet
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    shown = 0.0
    broken = False
    try:
        while args.count is None or out.frames < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                pkts = ch.recv(256, timeout=min(left, 0.25) if left is not None else 0.25)
            except BlockingIOError:
                pkts = []
            except ChannelError as e:
                print(f"\nusnet capture: the monitor ended: {e}", file=sys.stderr)
                break
            for p in pkts:
                if args.count is None or out.frames < args.count:
                    out.write(ch.view(p))
            if pkts:
                ch.free(pkts)
                if to_stdout:
                    out.flush()  # a reader (tshark -r -) sees each batch as it comes
            if live and time.monotonic() - shown >= 0.25:
                shown = time.monotonic()
                st = ch.stats()
                print(f"\r{out.frames:,} frames captured, {st['rx_dropped']:,} not kept", end="",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        broken = True
    finally:
        st = ch.stats()
        try:
            out.close()
        except BrokenPipeError:
            broken = True
        if not to_stdout:
            sink.close()
        ch.close()
    if broken:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (nothing more may reach the closed pipe)
        except OSError:
            pass
    lost = st["rx_dropped"]
    where = "standard output" if to_stdout else args.write
    print(f"{chr(13) if live else ''}captured {out.frames:,} frames to {where}; {st['rx_offered']:,} matched"
          + (f", {lost:,} the monitor could not keep (it fell behind: ring or pool full)" if lost else ""),
          file=sys.stderr)
    return 0


# -- metrics ----------------------------------------------------------------------------------

def fetch_metrics(address: str, timeout: float = 10.0) -> str:
    """GET /metrics from usnetd's endpoint ("unix:PATH" or "HOST:PORT"); OSError if it cannot."""
    import socket

    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[5:]
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    with s:
        s.settimeout(timeout)
        s.connect(target)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: usnetd\r\nAccept: text/plain\r\n\r\n")
        chunks = []
        while data := s.recv(1 << 16):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in status + " ":
        raise OSError(f"the endpoint answered {status!r}")
    return body.decode()


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print usnetd's Prometheus metrics once, for people without a scraper."""
    address = args.metrics or f"unix:{os.path.join(os.path.dirname(os.path.abspath(args.socket)), 'metrics.sock')}"
    try:
        text = fetch_metrics(address)
    except OSError as e:
        why = e.strerror or str(e)
        return _err("metrics", f"cannot read usnetd's metrics at {address} ({why}): is usnetd running, with "
                               "metrics on (its config's `metrics` key)? name the endpoint with --metrics")
    sys.stdout.write(text)
    return 0


# -- ss and flows -----------------------------------------------------------------------------

def _fmt_us(us: int) -> str:
    return f"{us / 1000:.3f}"


def _rate(bps: float) -> str:
    """Bytes/s as ss prints bit rates: 12.3Mbps."""
    bits = bps * 8
    for unit, div in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bits >= div:
            return f"{bits / div:.1f}{unit}"
    return f"{bits:.0f}bps"


def ss_rows(info: dict[str, Any], listening: bool = False, everything: bool = False) -> list[dict[str, Any]]:
    """Every TCP connection of every client in a Status document, one dict each: netif, state,
    local and remote (never cut), recv_q/send_q, the owner, and the TCPINFO figures."""
    out = []
    for nif in info.get("netifs", ()):
        name = nif["netif"]["name"]
        ip = nif["netif"]["address"].split("/")[0]
        ip6 = f"[{(nif['netif'].get('address6') or '').split('/')[0]}]"
        for f in nif["flows"]:
            tcp = f.get("tcp")
            if not tcp:
                continue
            for r in tcp["rows"]:
                if r["listener"] and not (listening or everything):
                    continue
                if listening and not everything and not r["listener"]:
                    continue
                row = dict(r)
                row["netif"] = name
                row["local"] = f"{ip6 if f.get('family') == 6 else ip}:{r['local_port']}"
                row["channel"] = f["channel"]
                row["owner"] = f.get("owner")
                out.append(row)
    return out


def _owner(o: dict[str, Any] | None) -> str:
    if not o:
        return ""
    return f'users:(("{o["program"]}",pid={o["pid"]})) uid:{o["uid"]}'


def ss_info(r: dict[str, Any]) -> str:
    """The `-i` line of one connection, in ss's words."""
    if r["listener"]:
        return ""
    mss = r["mss"] or 1
    parts = [f"rto:{r['rto_us'] / 1000:g}", f"rtt:{_fmt_us(r['rtt_us'])}/{_fmt_us(r['rttvar_us'])}",
             f"mss:{r['mss']}", f"cwnd:{r['cwnd'] // mss}"]
    if r["ssthresh"] < 0x7FFFFFFF:
        parts.append(f"ssthresh:{r['ssthresh'] // mss}")
    parts += [f"bytes_sent:{r['bytes_sent']}", f"bytes_retrans:{r['retransmitted_bytes']}",
              f"bytes_acked:{r['bytes_acked']}", f"bytes_received:{r['bytes_received']}",
              f"segs_out:{r['segs_out']}", f"segs_in:{r['segs_in']}"]
    if r["pacing_rate"]:
        parts.append(f"pacing_rate {_rate(r['pacing_rate'])}")
    if r["delivery_rate"]:
        parts.append(f"delivery_rate {_rate(r['delivery_rate'])}")
    parts += [f"retrans:{r['retransmits']}", f"rto_timeouts:{r['rto_timeouts']}",
              f"unacked:{r['in_flight']}", f"snd_wnd:{r['snd_wnd']}", f"rcv_wnd:{r['rcv_wnd']}"]
    return " ".join(parts)


def cmd_ss(args: argparse.Namespace) -> int:
    """Every TCP connection of every client, as `ss -tiepn` shows the kernel's (no name lookups)."""
    import json

    client = _connect(args.socket)
    if client is None:
        return 1
    try:
        info = client.status()
    finally:
        client.close()
    rows = ss_rows(info, args.listening, args.all)
    if args.json:
        print(json.dumps(rows))
        return 0
    head = ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Process"]
    table = [[r["state"], str(r["recv_q"]), str(r["send_q"]), r["local"], r["remote"], _owner(r["owner"])]
             for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(head)]  # whole addresses, always
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r, t in zip(rows, table):
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
        if args.info and not r["listener"]:
            print("\t " + ss_info(r))
    return 0


# -- ping -------------------------------------------------------------------------------------

def echo_size(text: str) -> int:
    """`usnet ping -s`: payload bytes of one unfragmented echo request on a 1500-byte MTU."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= v <= 1472:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1472 bytes, not {text!r}")
    return v


def ping_summary(sent: int, rtts_ms: list[float], elapsed_ms: float) -> list[str]:
    """ping(8)'s last two lines: loss, and rtt min/avg/max/mdev."""
    got = len(rtts_ms)
    loss = 0 if not sent else round(100 * (sent - got) / sent)
    lines = [f"{sent} packets transmitted, {got} received, {loss}% packet loss, time {elapsed_ms:.0f}ms"]
    if got:
        avg = sum(rtts_ms) / got
        mdev = (sum(r * r for r in rtts_ms) / got - avg * avg) ** 0.5 if got > 1 else 0.0
        lines.append(f"rtt min/avg/max/mdev = {min(rtts_ms):.3f}/{avg:.3f}/{max(rtts_ms):.3f}/{mdev:.3f} ms")
    return lines


def cmd_ping(args: argparse.Namespace) -> int:
    """ICMP echo from usnet's own address (the kernel's ping tests the host's side, not usnet's).

    The switch of the netif sends each request and keeps the replies to this session's identifier
    (usnet.domain.switch.echo); this command asks for them every few milliseconds. Exit 0 if any
    reply came, 1 if none did (as ping(8)).
    """
    import ipaddress
    import signal

    try:
        dst = str(ipaddress.IPv4Address(args.host))
    except ValueError:
        import socket as std

        try:
            dst = std.gethostbyname(args.host)
        except OSError:
            return _err("ping", f"{args.host}: not an IPv4 address, and no name the host's resolver knows")
    if args.interval < 0.2 and os.geteuid() != 0:
        return _err("ping", "an interval below 0.2 s needs root (as ping(8))")
    client = _connect(args.socket)
    if client is None:
        return 1
    netif = args.netif
    if netif is None:
        nifs = [n["netif"]["name"] for n in client.status()["netifs"] if n["netif"]["name"] != "lo"]
        if not nifs:
            client.close()
            return _err("ping", "usnetd has no netif to ping from; start one with `usnet up`")
        netif = nifs[0]
    src = next((n["netif"]["address"].split("/")[0] for n in client.status()["netifs"]
                if n["netif"]["name"] == netif), "?")
    print(f"PING {args.host} ({dst}) from {src} {netif}: {args.size}({args.size + 28}) bytes of data.", flush=True)
    rtts: list[float] = []
    seen: set[int] = set()
    sent = 0
    start = time.monotonic()
    stop = False

    def on_int(*_: Any) -> None:
        nonlocal stop
        stop = True

    old = signal.signal(signal.SIGINT, on_int)

    def show(replies: list) -> None:
        for seq, ttl, rtt_ns, size in replies:
            if seq in seen:
                print(f"{size} bytes from {dst}: icmp_seq={seq} ttl={ttl} time={rtt_ns / 1e6:.3f} ms (DUP!)")
                continue
            seen.add(seq)
            rtts.append(rtt_ns / 1e6)
            print(f"{size} bytes from {dst}: icmp_seq={seq} ttl={ttl} time={rtt_ns / 1e6:.3f} ms", flush=True)

    try:
        seq = 0
        while not stop and (args.count is None or sent < args.count):
            seq += 1
            show(client.ping(netif, dst, seq & 0xFFFF, args.size))
            sent += 1
            last = args.count is not None and sent >= args.count
            until = time.monotonic() + (args.wait if last else args.interval)
            while not stop and time.monotonic() < until:
                time.sleep(min(0.01, max(0.0, until - time.monotonic())))
                show(client.ping(netif, dst, send=False))
                if last and len(seen) >= sent:
                    break
    finally:
        signal.signal(signal.SIGINT, old)
        client.close()
    print(f"\n--- {args.host} ping statistics ---")
    for line in ping_summary(sent, rtts, (time.monotonic() - start) * 1000):
        print(line)
    return 0 if rtts else 1
