"""The gate on a command socket: what a client or the link makes usnetd or a worker send (frames
handed over, b"F" and b"L"; the host's groups, b"G" and b"M") goes without waiting and only up to
its share of the socket's send buffer (`send_within`), so a flood of them never takes the room of
usnetd's own commands (the heartbeat, a session, a neighbour). Both ends hand frames over, so the
gate, and the counting of what it let through or dropped, is one module both use."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from usnet.domain.workers.messages import neighbour_msg
from usnet.drivers.base import Received

__all__ = ["HAND_OVER_SHARE", "TOLD_SHARE", "count_hand_over", "frame_family", "hand_over_room", "send_handed",
           "send_within"]

# the share of a command socket's send buffer (SO_SNDBUF, counted as the kernel counts it: each
# message's whole buffer, as SIOCOUTQ reports the bytes not yet read) that frames handed over from
# the link (b"F") may fill; the rest is room for usnetd's own commands, a few small messages at a time
HAND_OVER_SHARE = 0.5
# the share that frames handed over and what usnetd tells of the clients' groups (b"G", b"M": each
# join, leave or filter change a client asks may make one, as fast as usnetd answers) may fill
# together: each kind of message fills the socket only up to its mark, the more a client or the link
# controls it the lower, so at least a quarter is always usnetd's own (the heartbeat, a session, a
# neighbour); a b"G" or b"M" past it leaves the worker `groups_stale` (told whole again later)
TOLD_SHARE = 0.75


def hand_over_room(cmd: socket.socket, share: float = HAND_OVER_SHARE) -> int:
    """The bytes of command socket `cmd`'s send buffer that frames handed over may fill (or, with
    `share` TOLD_SHARE, they and what usnetd tells of the clients' groups)."""
    return int(cmd.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) * share)


def send_within(cmd: socket.socket, room: int, msg: bytes) -> bool:
    """`msg` sent on command socket `cmd` without waiting; False if it could not be: the other end
    gone, or what is sent and not read yet (SIOCOUTQ, as the kernel counts it) would pass `room`
    with it. The one gate of every message on a command socket that a client or the link makes
    (hand-overs, the host's groups), so a flood of them never takes the room of a heartbeat or a
    session."""
    try:
        unread = struct.unpack("i", fcntl.ioctl(cmd.fileno(), termios.TIOCOUTQ, bytes(4)))[0]
        if unread + len(msg) > room:
            return False
        cmd.send(msg, socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def send_handed(cmd: socket.socket, room: int, kind: bytes, netif: str, family: int, frame: Received) -> bool:
    """A frame handed to the other end of command socket `cmd` (b"F" or b"L": `neighbour_msg`),
    within `room` (`hand_over_room`: `send_within`); False if it could not be."""
    return send_within(cmd, room, neighbour_msg(kind, netif, family, frame))


def count_hand_over(sw: Any, sent: bool) -> None:
    """A hand-over's outcome in switch `sw`'s counters: `rx_handed_over`, or `rx_hand_over_failed`
    (the other end gone or its room full: dropped)."""
    if sent:
        sw.counts["rx_handed_over"] += 1
    else:
        sw.drops["rx_hand_over_failed"] += 1


def frame_family(frame: Received) -> int:
    """4 or 6: the IP version of Ethernet frame `frame`."""
    return 4 if int.from_bytes(frame[12:14], "big") == 0x0800 else 6
