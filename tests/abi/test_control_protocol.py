"""Control protocol (msgspec messages) and SEQPACKET transport."""

from __future__ import annotations

import errno
import os
import pickle
import socket

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.abi.protocol import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    AdvisoryOpened,
    ChannelOpened,
    CloseChannel,
    ControlError,
    Done,
    Error,
    Flushed,
    FlushQueue,
    Hello,
    Kick,
    LeaseGranted,
    LeaseRefused,
    OpenAdvisory,
    OpenPipe,
    ProtocolError,
    ReleaseLease,
    RenewLease,
    RequestLease,
    Resize,
    Status,
    StatusReply,
    Welcome,
    decode_reply,
    decode_request,
    decode_status,
    encode,
    encode_status,
    error_reply,
)
from usnet.abi.transport import (
    ControlClient,
    connect_seqpacket,
    listen_seqpacket,
    peer_credentials,
    recv_msg,
    send_msg,
)

REQUESTS = [
    Hello(PROTOCOL_VERSION),
    Hello(1, program="demo"),
    OpenPipe("p0"),
    OpenPipe("p1", schema="bulk", attrs={"ring_size": 1024, "packets": 4096}),
    Resize(3),
    Resize(3, ring_size=256, packets=None),
    Resize(3, packets=512),
    CloseChannel(7),
    Kick(0),
    FlushQueue(5),
    Status(),
    RequestLease(3, "voice", 64e3, 200, 0.02),
    RequestLease(3, "interactive", 1e12, 65535, 60.0),
    RenewLease(9),
    ReleaseLease(9),
    OpenAdvisory("usnet0"),
]
REPLIES = [
    Welcome(version=1, session=42, uid=os.getuid(), pid=os.getpid()),
    ChannelOpened(channel=1, role=0, schema="default", layout=b"\x00\x01\xffabc"),
    Done(),
    Flushed(12),
    AdvisoryOpened(netif="usnet0", size=320),
    StatusReply(b"\x81\xa1n\xfd", 0, 1),
    StatusReply(b"", 2, 3),
    Error("EADDRINUSE", "pipe p0 already has two ends"),
    LeaseGranted(lease=9, channel=3, service_class="voice", rate=64e3, max_packet=200, latency_target=0.02,
                 expires=1234.5, ttl=30.0, burst=428),
    LeaseRefused("OVER_SUBSCRIBED", "1e+08 bit/s does not fit"),
]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


# ---- messages --------------------------------------------------------------------


@pytest.mark.parametrize("msg", REQUESTS, ids=repr)
def test_request_roundtrip(msg):
    assert decode_request(encode(msg)) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=repr)
def test_reply_roundtrip(msg):
    assert decode_reply(encode(msg)) == msg


def test_messages_are_frozen_and_tagged():
    with pytest.raises(AttributeError):
        Kick(1).channel = 2  # type: ignore[misc]
    assert msgspec.msgpack.decode(encode(Kick(1)))["t"] == "Kick"


def test_direction_is_enforced():
    for r in REPLIES:
        with pytest.raises(ProtocolError):
            decode_request(encode(r))
    for q in REQUESTS:
        with pytest.raises(ProtocolError):
            decode_reply(encode(q))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\xff\x00garbage",
        encode(OpenPipe("p", attrs={"a": 1}))[:-2],  # truncated
        msgspec.msgpack.encode({"t": "Nope"}),
        msgspec.msgpack.encode({"channel": 1}),  # no tag
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"t": "Resize", "channel": "x"}),
        msgspec.msgpack.encode({"t": "Resize", "channel": -1}),
        msgspec.msgpack.encode({"t": "Resize", "channel": 1, "ring_size": 1.5}),
        msgspec.msgpack.encode({"t": "Hello"}),  # missing field
        msgspec.msgpack.encode({"t": "OpenPipe", "name": "p", "attrs": {"a": "b"}}),
        msgspec.msgpack.encode({"t": "OpenPipe", "name": ""}),
        # lease parameters no lease can have: malformed, as any out-of-bounds field is
        *(msgspec.msgpack.encode({"t": "RequestLease", "channel": 1, "service_class": "voice", "rate": 1e6,
                                  "max_packet": 200, "latency_target": 0.01, **bad})
          for bad in ({"rate": float("nan")}, {"rate": float("inf")}, {"rate": -1.0}, {"rate": 0},
                      {"rate": 2e12}, {"rate": "fast"}, {"rate": True}, {"max_packet": 0},
                      {"max_packet": 19}, {"max_packet": 65536}, {"max_packet": 1.5},
                      {"latency_target": 0.0}, {"latency_target": float("nan")},
                      {"latency_target": float("inf")}, {"latency_target": 61.0}, {"service_class": ""},
                      {"service_class": "x" * 33}, {"channel": -1})),
        msgspec.msgpack.encode({"t": "RenewLease", "lease": -1}),
        msgspec.msgpack.encode({"t": "ReleaseLease"}),
        msgspec.msgpack.encode({"t": "OpenAdvisory", "netif": ""}),
        msgspec.msgpack.encode({"t": "OpenAdvisory"}),
        b"\x90" * (MAX_MESSAGE + 1),  # oversize
    ],
)
def test_bad_requests_raise_protocol_error(raw):
    with pytest.raises(ProtocolError):
        decode_request(raw)


def test_bad_replies_raise_protocol_error():
    for raw in [msgspec.msgpack.encode({"t": "StatusReply", "data": b"", "part": 0, "parts": 0}),
                msgspec.msgpack.encode({"t": "Error", "code": "nope", "message": ""}),
                msgspec.msgpack.encode({"t": "ChannelOpened", "channel": 1, "role": 0,
                                        "schema": "d", "layout": "not-bytes"})]:
        with pytest.raises(ProtocolError):
            decode_reply(raw)


def test_encode_refuses_oversize_and_non_messages():
    with pytest.raises(ProtocolError):
        encode(StatusReply(b"x" * MAX_MESSAGE, 0, 1))
    with pytest.raises(TypeError):
        encode({"t": "Status"})  # type: ignore[arg-type]


def test_status_document_decodes_or_raises_protocol_error():
    """The joined StatusReply parts: any document round-trips; garbage and deep nesting are refused."""
    doc = {"pipes": [{"name": "p0", "ends": 2}], "load": 0.5, "n": -3, "s": "x", "e": {}}
    assert decode_status(encode_status(doc)) == doc
    for raw in [b"\xc1", b"\x81\xa1a" * 30000 + b"\xc0", b"\x91\x01"]:
        with pytest.raises(ProtocolError):
            decode_status(raw)


def test_unknown_fields_are_ignored_for_forward_compat():
    raw = msgspec.msgpack.encode({"t": "Kick", "channel": 2, "future": [1, 2]})
    assert decode_request(raw) == Kick(2)


def test_control_error_and_error_reply():
    e = ControlError("EBUSY", "ring in use")
    assert isinstance(e, OSError) and e.errno == errno.EBUSY and e.code == "EBUSY"
    assert ControlError("EDEFUNCT", "x").errno is None
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.message, e2.errno) == ("EBUSY", "ring in use", errno.EBUSY)
    assert error_reply(e) == Error("EBUSY", "ring in use")
    assert error_reply(ProtocolError("bad")).code == "EPROTO"
    assert error_reply(OSError(errno.ENOBUFS, "full")) == Error("ENOBUFS", "full")
    assert error_reply(ValueError("v")).code == "EINVAL"


_fields = st.dictionaries(
    st.sampled_from(["version", "program", "name", "schema", "attrs", "channel", "ring_size",
                     "packets", "info", "code", "x"]),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
        | st.text(max_size=8) | st.binary(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)
_tags = st.sampled_from([t.__name__ for t in REQUEST_TYPES] + ["Welcome", "Error", "Bogus"])
_structured = st.builds(lambda t, f: msgspec.msgpack.encode({"t": t, **f}), _tags, _fields)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=256), _structured))
def test_decode_never_raises_anything_but_protocol_error(raw):
    for decode in (decode_request, decode_reply):
        try:
            msg = decode(raw)
        except ProtocolError:
            continue
        if decode is decode_request:
            assert isinstance(msg, REQUEST_TYPES)
            assert decode_request(encode(msg)) == msg


# ---- transport -------------------------------------------------------------------


def test_fds_travel(pair):
    a, b = pair
    mfd = os.memfd_create("usnet-test")
    r, w = os.pipe()
    try:
        os.write(mfd, b"hello")
        send_msg(a, encode(Hello(1)), [mfd, r])
        data, fds = recv_msg(b)
        assert decode_request(data) == Hello(1) and len(fds) == 2
        for mine, got in zip((mfd, r), fds):
            assert (os.fstat(mine).st_ino, os.fstat(mine).st_dev) == (os.fstat(got).st_ino, os.fstat(got).st_dev)
            assert got not in (mfd, r, w) and not os.get_inheritable(got)
        assert os.pread(fds[0], 5, 0) == b"hello"
        os.write(w, b"!")
        assert os.read(fds[1], 1) == b"!"
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (mfd, r, w):
            os.close(fd)


def test_peer_credentials(pair):
    assert peer_credentials(pair[0]) == (os.getpid(), os.getuid(), os.getgid())


def test_eof(pair):
    a, b = pair
    a.close()
    assert recv_msg(b) == (b"", [])


def test_send_refuses_empty_and_oversize(pair):
    with pytest.raises(ProtocolError):
        send_msg(pair[0], b"")
    with pytest.raises(ProtocolError):
        send_msg(pair[0], b"x" * (MAX_MESSAGE + 1))


def test_oversize_message_raises_without_fd_leak(pair):
    a, b = pair
    mfd = os.memfd_create("usnet-test")
    try:
        before = fd_count()
        socket.send_fds(a, [b"x" * 70000], [mfd, mfd])
        with pytest.raises(ProtocolError, match="exceeds"):
            recv_msg(b)
        assert fd_count() == before
        send_msg(a, encode(Status()))  # the socket is still usable afterwards
        assert decode_request(recv_msg(b)[0]) == Status()
    finally:
        os.close(mfd)


def test_too_many_fds_raise_without_leak(pair):
    a, b = pair
    mfd = os.memfd_create("usnet-test")
    try:
        before = fd_count()
        send_msg(a, encode(Status()), [mfd] * 4)
        with pytest.raises(ProtocolError, match="descriptors"):
            recv_msg(b, max_fds=2)
        assert fd_count() == before
    finally:
        os.close(mfd)


def test_listen_connect_and_stale_socket(sockdir):
    path = os.path.join(sockdir, "ctl")
    srv = listen_seqpacket(path)
    try:
        with pytest.raises(OSError) as ei:
            listen_seqpacket(path)  # live daemon: refuse, keep its path
        assert ei.value.errno == errno.EADDRINUSE and os.path.exists(path)
        cli = connect_seqpacket(path, timeout=1.0)
        conn, _ = srv.accept()
        assert peer_credentials(conn)[:2] == (os.getpid(), os.getuid())
        cli.close()
        conn.close()
    finally:
        srv.close()
    assert os.path.exists(path)  # stale socket file left behind
    listen_seqpacket(path).close()  # ...is replaced

    regular = os.path.join(sockdir, "file")
    open(regular, "w").close()
    with pytest.raises(FileExistsError):
        listen_seqpacket(regular)
    assert os.path.isfile(regular)


def test_control_client(pair):
    a, b = pair
    # Replies are queued before the requests: SEQPACKET buffers both ways, no thread needed.
    mfd = os.memfd_create("usnet-test")
    send_msg(b, encode(Welcome(1, 9, os.getuid(), os.getpid())))
    send_msg(b, encode(ChannelOpened(4, 0, "default", b"L")), [mfd])
    send_msg(b, encode(Error("EBUSY", "busy")), [mfd])
    os.close(mfd)
    client = ControlClient(a, timeout=5.0)
    reply, fds = client.request(Hello(PROTOCOL_VERSION, "t"))
    assert reply == Welcome(1, 9, os.getuid(), os.getpid()) and fds == []
    reply, fds = client.request(OpenPipe("p"))
    assert isinstance(reply, ChannelOpened) and len(fds) == 1
    os.close(fds[0])
    before = fd_count()
    with pytest.raises(ControlError) as ei:
        client.request(Status())
    assert ei.value.errno == errno.EBUSY and fd_count() == before  # fds of an Error are closed
    assert [decode_request(recv_msg(b)[0]) for _ in range(3)] == [Hello(PROTOCOL_VERSION, "t"), OpenPipe("p"), Status()]
    with pytest.raises(TypeError):
        client.request(Done())  # type: ignore[arg-type]


def test_control_client_timeout_closes(pair):
    client = ControlClient(pair[0], timeout=0.05)
    with pytest.raises(TimeoutError):
        client.request(Status())
    with pytest.raises(ConnectionError):
        client.request(Status())


def test_control_client_eof(pair):
    a, b = pair
    b.close()
    with pytest.raises(ConnectionError):
        ControlClient(a).request(Status())
