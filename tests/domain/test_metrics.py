"""usnet.domain.metrics without devices: the endpoint's address rules, and the collector on an embedded domain."""

from __future__ import annotations

import pytest

from usnet.domain.metrics import MetricsServer, parse_address, render


@pytest.mark.parametrize(("text", "want"), [
    ("unix:/run/usnet/metrics.sock", ("unix", "/run/usnet/metrics.sock")),
    ("127.0.0.1:9464", ("tcp", ("127.0.0.1", 9464))),
    ("[::1]:9464", ("tcp", ("::1", 9464))),
    ("localhost:9464", ("tcp", ("127.0.0.1", 9464))),
    ("off", None),
])
def test_addresses_taken(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "example.com:9464",
                                  "unix:relative.sock", "127.0.0.1", "127.0.0.1:99999"])
def test_public_or_malformed_addresses_refused_in_one_line(text):
    with pytest.raises(ValueError) as e:
        parse_address(text)
    assert "\n" not in str(e.value)


def test_config_refuses_a_public_metrics_address(tmp_path):
    from usnet.domain import config

    p = tmp_path / "u.toml"
    p.write_text('metrics = "0.0.0.0:9464"\n')
    with pytest.raises(ValueError, match="not a loopback address"):
        config.load(str(p))


def test_collector_on_an_embedded_domain_and_the_loopback_endpoint(sockdir):
    from prometheus_client.parser import text_string_to_metric_families

    import usnet
    from usnet.cli.ops import fetch_metrics

    with usnet.Domain() as d:
        d.add_loopback()
        c = usnet.Client.local(d)
        u = c.udp_socket("lo", 7000)
        names = {f.name for f in text_string_to_metric_families(render(d).decode())}
        assert {"usnet_netif_rx_frames", "usnet_flow_packets", "usnet_pool_packets", "usnet_leases_granted",
                "usnet_control_requests", "usnet_sessions"} <= names
        for where in (f"unix:{sockdir}/m.sock", "127.0.0.1:0"):
            srv = MetricsServer(d, where)
            try:
                text = fetch_metrics(srv.describe())
            finally:
                srv.close()
            assert 'usnet_flows{netif="lo"} 1.0' in text
        u.close()
