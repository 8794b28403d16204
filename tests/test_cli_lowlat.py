"""The low-latency knobs outside the data path: `usnet up`'s pacing flags, usnetd's advisory keys,
and `usnet status`'s lease table.

`usnet up`'s flags are tested through the config they become
(`updown.build_config`) and through `up()` refusing nonsense before it makes
anything, so no device is created here. The advisory keys are tested in the
config, in the usnetd it starts (its log; and, privileged, the advisory a
client reads off a TAP netif), and `usnet status` against an embedded domain
listening on a socket, with a lease granted as tests/test_lowlat.py grants them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import tap_name
from test_usnetd import Daemon

from usnet.cli import updown
from usnet.cli.main import _bits, main
from usnet.client import Client
from usnet.daemon import config
from usnet.daemon.transport import listen_seqpacket
from usnet.drivers import MemWire
from usnet.lowlat.policy import Policy, PolicyEntry
from usnet.nexus.domain import Domain

ME = os.getuid()


def build(**kw) -> config.Config:
    return updown.build_config("tap", "usnet0", "10.77.0.2/24", "10.77.0.1/24", "/tmp/x.sock", **kw)


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="uscl")  # short: AF_UNIX paths stop at 108 bytes
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- usnet up --link-rate / --ll-share / --strict -------------------------------------------------------


def test_up_flags_become_the_netif_s_pacing_keys_and_survive_the_written_file(tmp_path):
    plain = build()
    nc = plain.netif[0]
    assert (nc.link_rate, nc.ll_share, nc.work_conserving) == (None, None, None)
    assert "link_rate" not in config.dump(plain)  # unpaced, as before the flags existed
    cfg = build(link_rate=50e6, ll_share=0.25, strict=True)
    nc = cfg.netif[0]
    assert (nc.link_rate, nc.ll_share, nc.work_conserving) == (50e6, 0.25, False)
    assert (nc.name, nc.ifname, nc.address, nc.gateway) == ("usnet0", "usnet0", "10.77.0.2/24", "10.77.0.1")
    p = tmp_path / "usnetd.toml"
    p.write_text(config.dump(cfg))  # what `usnet up` writes, read back as usnetd reads it
    assert config.load(str(p)) == cfg
    # without --strict the key stays out: the netif is work-conserving (the default)
    nc = build(link_rate=1e9).netif[0]
    assert (nc.link_rate, nc.ll_share, nc.work_conserving) == (1e9, None, None)


@pytest.mark.parametrize("kw, msg", [
    ({"link_rate": -5.0}, "link_rate must be a positive, finite number"),
    ({"link_rate": 0.0}, "link_rate must be a positive, finite number"),
    ({"link_rate": float("nan")}, "link_rate must be a positive, finite number"),
    ({"link_rate": float("inf")}, "link_rate must be a positive, finite number"),
    ({"link_rate": 1e8, "ll_share": 1.5}, "ll_share must be from 0 to 0.9"),
    ({"link_rate": 1e8, "ll_share": -0.1}, "ll_share must be from 0 to 0.9"),
    ({"link_rate": 1e8, "ll_share": float("nan")}, "ll_share must be from 0 to 0.9"),
    ({"ll_share": 0.2}, "need link_rate"),
    ({"strict": True}, "need link_rate"),
])
def test_up_refuses_nonsense_pacing_by_name(kw, msg):
    with pytest.raises(ValueError, match=msg):
        build(**kw)


def test_up_with_nonsense_flags_says_why_and_makes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    ifname = tap_name()
    rc = updown.up("tap", ifname, "10.77.0.2/24", "10.77.0.1/24", str(run_dir), link_rate=-1.0)
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("usnet up: link_rate must be") and err.count("\n") == 1
    assert not run_dir.exists()  # refused before the run directory, the device or usnetd
    assert not os.path.exists(f"/sys/class/net/{ifname}")


def test_up_flags_are_parsed_and_handed_to_up(monkeypatch):
    got = {}

    def fake_up(*args, **kw):
        got.update(kw)
        return 0

    monkeypatch.setattr(updown, "up", fake_up)
    assert main(["up", "--link-rate", "50M", "--ll-share", "0.25", "--strict"]) == 0
    assert (got["link_rate"], got["ll_share"], got["strict"]) == (50e6, 0.25, True)
    assert main(["up"]) == 0
    assert (got["link_rate"], got["ll_share"], got["strict"]) == (None, None, False)


def test_link_rate_takes_numbers_and_suffixes_and_refuses_words(capsys):
    assert [_bits(t) for t in ("50e6", "50M", "1.5G", "500k", "2000")] == [50e6, 50e6, 1.5e9, 500e3, 2000.0]
    with pytest.raises(SystemExit) as e:
        main(["up", "--link-rate", "fast"])
    assert e.value.code == 2 and "--link-rate" in capsys.readouterr().err
