"""The low-latency knobs outside the data path: `usnet up`'s pacing flags, usnetd's advisory keys,
and `usnet status`'s lease table.

`usnet up`'s flags are tested through the config they become
(`updown.build_config`) and through `up()` refusing nonsense before it makes
anything, so no device is created here. The advisory keys are tested in the
config, in the usnetd it starts (its log; and, privileged, the advisory a
client reads off a TAP netif), and `usnet status` against an embedded domain
listening on a socket, with a lease granted as tests/domain/test_lowlat.py grants them.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.helpers.usnetd import Daemon
from tests.helpers.util import tap_name
from usnet.abi.transport import listen_seqpacket
from usnet.cli.main import _bits, main
from usnet.client import Client
from usnet.domain import config
from usnet.domain import launch as updown
from usnet.domain.loop import Domain
from usnet.domain.lowlat.policy import Policy, PolicyEntry
from usnet.drivers import MemWire

ME = os.getuid()


def build(**kw) -> config.Config:
    return updown.build_config("tap", "usnet0", "10.77.0.2/24", "10.77.0.1/24", "/tmp/x.sock", **kw)


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


# -- usnetd's advisory_interval and delay_target ---------------------------------------------------------


def test_advisory_keys_load_reach_the_domain_and_survive_dump(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('advisory_interval = 0.02\ndelay_target = 1\n[[netif]]\nname = "u0"\naddress = "10.1.0.2/24"\n')
    cfg = config.load(str(p))
    assert (cfg.advisory_interval, cfg.delay_target) == (0.02, 1.0)
    assert cfg.domain_kwargs() == {"advisory_interval": 0.02, "delay_target": 1.0}
    with Domain(**cfg.domain_kwargs()) as d:
        assert (d.advisory_interval, d.delay_target) == (0.02, 1.0)
    p.write_text(config.dump(cfg))
    assert config.load(str(p)) == cfg
    # unset: absent from the file and from the domain's arguments, so the domain's defaults hold
    p.write_text('[[netif]]\nname = "u0"\naddress = "10.1.0.2/24"\n')
    cfg = config.load(str(p))
    assert cfg.domain_kwargs() == {} and "advisory" not in config.dump(cfg) and "delay" not in config.dump(cfg)


@pytest.mark.parametrize("text, msg", [
    ("advisory_interval = 0", "advisory_interval must be a positive number of seconds"),
    ("advisory_interval = -0.5", "advisory_interval must be a positive number of seconds"),
    ("advisory_interval = inf", "advisory_interval must be a positive number of seconds"),
    ("delay_target = nan", "delay_target must be a positive number of seconds"),
    ("delay_target = -1", "delay_target must be a positive number of seconds"),
    ('delay_target = "5ms"', "delay_target"),
    ("delay_target = true", "delay_target"),
])
def test_config_refuses_nonsense_advisory_keys_by_name(tmp_path, text, msg):
    p = tmp_path / "c.toml"
    p.write_text(text + "\n")
    with pytest.raises(ValueError, match=msg):
        config.load(str(p))


def test_usnetd_builds_its_domain_with_the_advisory_keys(sockdir):
    cfg = sockdir / "c.toml"
    cfg.write_text("advisory_interval = 0.02\ndelay_target = 0.015\n")
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--config", str(cfg))
    try:
        assert "interface advisories: published every 0.02 s, delay target 0.015 s" in d.log_text()
    finally:
        assert d.stop() == 0


def test_usnetd_refuses_a_config_with_a_nonsense_advisory_key(sockdir):
    import subprocess
    import sys

    cfg = sockdir / "c.toml"
    cfg.write_text("delay_target = 0\n")
    p = subprocess.run([sys.executable, "-m", "usnet.domain.usnetd", "--config", str(cfg), "--socket",
                        str(sockdir / "s.sock")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "delay_target must be a positive number of seconds" in p.stderr


@pytest.mark.privileged
def test_a_client_reads_the_configured_delay_target_in_the_advisory(sockdir):
    cfg = sockdir / "c.toml"
    cfg.write_text(f'delay_target = 0.02\nadvisory_interval = 0.01\n\n[[netif]]\nname = "adv1"\ndriver = "tap"\n'
                   f'ifname = "{tap_name()}"\naddress = "10.252.0.2/24"\nlink_rate = 25e6\n')
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--config", str(cfg))
    try:
        c = Client.connect(d.path)
        with c.advisory("adv1") as adv:
            assert adv.snapshot().tx.target_delay_ns == 20_000_000
        c.close()
    finally:
        assert d.stop() == 0, d.log_text()


# -- usnet status: the lease table ---------------------------------------------------------------------


def test_status_lists_a_granted_lease(sockdir, capsys, monkeypatch):
    wire = MemWire()
    policy = Policy([PolicyEntry(frozenset({"voice"}), 2e6, 1200, uid=ME)])
    path = str(sockdir / "s.sock")
    with Domain(policy=policy) as d:
        d.add_netif("a", wire.a, "10.9.0.1/24", link_rate=1e9, ll_share=0.2)
        d.add_netif("b", wire.b, "10.9.0.2/24")
        d.listen(listen_seqpacket(path))
        d.start()
        c = Client.local(d, program="voipd")
        s = c.udp_socket("a", 5000)
        lease = c.request_lease(s, service_class="voice", rate=1.5e6, max_packet=1200, latency_target=0.05)

        monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
        assert main(["status", "--socket", path]) == 0
        out = capsys.readouterr().out
        assert "low-latency leases (policy: 1 entry; a grant or renewal lasts 30 s)" in out
        (row,) = [line for line in out.splitlines() if "voipd" in line and "voice" in line]
        cells = re.split(r"\s{2,}", row.strip())
        assert cells[:7] == [str(lease.id), f"a ch {s.channel.id}", f"{ME} voipd", "voice", "1.5 Mbit/s",
                             "1,200 B", "50 ms"]
        assert cells[8] == "0/0"  # nothing sent yet: the policer passed and dropped nothing
        assert "a: 1.5 Mbit/s of 200.0 Mbit/s granted" in out and "Granted 1" in out

        assert main(["status", "--socket", path, "--json"]) == 0
        (got,) = json.loads(capsys.readouterr().out)["lowlat"]["leases"]
        assert (got["id"], got["program"], got["rate"]) == (lease.id, "voipd", 1.5e6)

        lease.release()
        assert main(["status", "--socket", path]) == 0
        out = capsys.readouterr().out
        assert "voice" not in out.split("low-latency leases")[1] and "ended RELEASED 1" in out
