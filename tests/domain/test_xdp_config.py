"""usnetd's config for the xdp driver: `driver = "xdp"` and `share_host` (issue 19)."""

from __future__ import annotations

import pytest

from usnet.domain import config


def test_share_host_needs_the_xdp_driver():
    config.NetifConfig(name="eth0", address="10.1.0.5/24", driver="xdp", share_host=True)
    with pytest.raises(ValueError, match="share_host needs driver"):
        config.NetifConfig(name="eth0", address="10.1.0.5/24", driver="packet", share_host=True)


def test_share_host_is_ipv4_only():
    with pytest.raises(ValueError, match="IPv4 only"):
        config.NetifConfig(name="eth0", address="10.1.0.5/24", driver="xdp", share_host=True,
                           address6="fd00:1::5/64")


def test_an_xdp_netif_survives_dump_and_load(tmp_path):
    nc = config.NetifConfig(name="eth0", address="10.1.0.5/24", driver="xdp", ifname="veth0", share_host=True)
    path = tmp_path / "usnetd.toml"
    path.write_text(config.dump(config.Config(socket=str(tmp_path / "s"), netif=[nc])))
    assert config.load(str(path)).netif[0] == nc
