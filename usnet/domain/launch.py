"""`usnet up` and `usnet down`: the device, its host-side address, and usnetd.

Devices and addresses are made through netlink (pyroute2). `up` records what
it made in the run directory so that `down` undoes exactly that.

IPv6 is optional (`--address6`): the host's IPv6 address is added with
IFA_F_NODAD, so it is usable at once instead of after duplicate address
detection (a second or so during which the kernel would not use it), and `up`
returns once the kernel routes it as its own (usnet.drivers.hostnet.add_address6).

Pacing is optional too: `--link-rate`, `--ll-share` and `--strict` become
the netif's `link_rate`, `ll_share` and `work_conserving = false` in the
usnetd config `up` writes (`build_config`), and are checked as that config is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import msgspec

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.domain import config
from usnet.domain.lowlat.agent import DEFAULT_TTL
from usnet.drivers.hostnet import add_address6, delete_links

if TYPE_CHECKING:
    from usnet.drivers.hostnet import NetNs

__all__ = ["RUN_DIR", "build_config", "check_addressing", "down", "host_address6_for", "up"]

RUN_DIR = os.environ.get("USNET_RUN_DIR", "/run/usnet")


def _paths(run_dir: str) -> dict[str, str]:
    return {k: os.path.join(run_dir, f) for k, f in
            (("config", "usnetd.toml"), ("state", "state.json"), ("log", "usnetd.log"), ("socket", "usnetd.sock"))}


def is_up(run_dir: str = RUN_DIR) -> bool:
    """Whether `up` left a usnetd for `down` to stop in `run_dir` (its state file is there)."""
    return os.path.exists(_paths(run_dir)["state"])


def _make_device(driver: str, ifname: str, netns: str | None) -> tuple[str, list[str]]:
    """Create the device; returns (the host end's name, the links to delete later).

    The host end is configured by `_host_side`: with `netns`, only once usnetd holds the device
    and the host end has moved into that namespace.
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=ifname):
            raise OSError(f"{ifname} exists already (usnet down first?)")
        if driver == "tap":
            ipr.link("add", ifname=ifname, kind="tuntap", mode="tap")
            return ifname, [ifname]
        # packet, xdp: a veth pair; usnet takes one end, the host keeps the other
        host_if = f"{ifname}h"
        ipr.link("add", ifname=ifname, kind="veth", peer=host_if)
        if netns is not None:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up", txqlen=10000)
        return host_if, [ifname]


def _host_side(ifnames: set[str], host_if: str, host_address: str, host_address6: str | None,
               checksum_in_software: bool = False) -> None:
    """Bring the links up and give the host end its addresses, in the caller's namespace.

    `checksum_in_software`: the host end fills in its TCP/UDP checksums itself (for the xdp
    driver, which cannot tell a frame whose checksum was left to the device: usnet.drivers.xdp).
    """
    from pyroute2 import IPRoute

    addr, _, plen = host_address.partition("/")
    with IPRoute() as ipr:
        # The host end last: a veth end brought up before its peer has no carrier, and gets its
        # queueing discipline only when the carrier comes, later, from the kernel's link-watch work
        # queue; until then what the kernel sends by it is dropped (17 of 200 datagrams sent right
        # after the peer came up, measured on a bare veth). The end brought up second has its carrier
        # at once. usnet's end sends past the queueing discipline (PACKET_QDISC_BYPASS,
        # usnet.drivers.packet), so its order does not matter.
        for name in sorted(ifnames, key=lambda n: n == host_if):
            # a deep host-side queue: usnet reads in batches, the kernel should not drop meanwhile
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up", txqlen=10000)
        idx = ipr.link_lookup(ifname=host_if)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=int(plen or 24))
        if host_address6:
            h6 = ipaddress.IPv6Interface(host_address6)
            add_address6(ipr, idx, str(h6.ip), h6.network.prefixlen)
    if checksum_in_software:
        from usnet.drivers.xdp import tx_checksum_off

        tx_checksum_off(host_if)


def _write_state(path: str, state: dict) -> None:
    with open(path, "w") as f:
        json.dump(state, f)


def _to_netns(ns: NetNs, host_if: str, host_address: str, host_address6: str | None,
             checksum_in_software: bool = False) -> None:
    """Move the host end into namespace `ns` and configure it there."""
    ns.take(host_if)
    with ns.entered():
        _host_side({host_if}, host_if, host_address, host_address6, checksum_in_software)


def host_address6_for(address6: str) -> str:
    """The host's default IPv6 address beside usnet's: the first of the prefix (::1), or the second."""
    iface = ipaddress.IPv6Interface(address6)
    first = iface.network.network_address + 1
    host = first if first != iface.ip else first + 1
    return f"{host}/{iface.network.prefixlen}"


def check_addressing(address: str, host_address: str, address6: str | None = None,
                     host_address6: str | None = None) -> None:
    """Refuse addressing that cannot work, with a one-line reason (ValueError) that says what to change.

    usnet and the host share one link, so they need one subnet, two different addresses in it,
    neither of them the subnet's network or broadcast address, and a prefix with room for both
    (/30 or shorter: /31 and /32 have no such addresses, and the gateway logic assumes them).
    The same for IPv6, where the subnet-router anycast address (the prefix's ::0) is refused too.
    """
    try:
        me, host = ipaddress.IPv4Interface(address), ipaddress.IPv4Interface(host_address)
    except ValueError as e:
        raise ValueError(f"not an IPv4 address/prefix such as 10.77.0.2/24: {e}") from None
    for who, iface in (("usnet's address", me), ("the host's address", host)):
        if iface.network.prefixlen > 30:
            raise ValueError(f"{who} {iface} has a /{iface.network.prefixlen} prefix: no room for two hosts "
                             "on the link; use /30 or shorter, e.g. /24")
        if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            kind = "network" if iface.ip == iface.network.network_address else "broadcast"
            raise ValueError(f"{who} {iface} is the {kind} address of {iface.network}; choose a host address "
                             f"such as {iface.network.network_address + 2}")
        if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified or iface.ip.is_reserved:
            raise ValueError(f"{who} {iface.ip} is not a unicast address for a link; use a private "
                             "address such as 10.77.0.2/24")
    if me.network != host.network:
        raise ValueError(f"usnet ({me}) and the host ({host}) are in different subnets ({me.network} and "
                         f"{host.network}); give both addresses in one subnet, e.g. --address 10.77.0.2/24 "
                         "--host-address 10.77.0.1/24")
    if me.ip == host.ip:
        raise ValueError(f"usnet and the host both have {me.ip}; give them different addresses")
    if address6 is None:
        return
    if host_address6 is None:
        raise ValueError("the host's IPv6 address is missing (--host-address6)")
    try:
        me6, host6 = ipaddress.IPv6Interface(address6), ipaddress.IPv6Interface(host_address6)
    except ValueError as e:
        raise ValueError(f"not an IPv6 address/prefix such as fd00:77::2/64: {e}") from None
    for who, i6 in (("usnet's IPv6 address", me6), ("the host's IPv6 address", host6)):
        if i6.network.prefixlen > 126:
            raise ValueError(f"{who} {i6} has a /{i6.network.prefixlen} prefix: no room for two hosts; "
                             "use /64")
        if i6.ip == i6.network.network_address:
            raise ValueError(f"{who} {i6} is its prefix's subnet-router anycast address; choose another, "
                             f"such as {i6.network.network_address + 2}")
        if i6.ip.is_multicast or i6.ip.is_loopback or i6.ip.is_unspecified or i6.ip.is_link_local:
            raise ValueError(f"{who} {i6.ip} is not a global or unique-local unicast address; use one "
                             "such as fd00:77::2/64")
    if me6.network != host6.network:
        raise ValueError(f"usnet ({me6}) and the host ({host6}) are in different IPv6 prefixes ({me6.network} "
                         f"and {host6.network}); give both addresses in one prefix")
    if me6.ip == host6.ip:
        raise ValueError(f"usnet and the host both have {me6.ip}; give them different IPv6 addresses")


def _load_extra(path: str | None, what: str) -> config.Config:
    """A config file given to `usnet up --config` or `--policy` (an empty Config without one)."""
    if path is None:
        return config.Config()
    try:
        return config.load(path)
    except OSError as e:
        raise ValueError(f"{what} {path}: {e.strerror or e}") from None


def build_config(driver: config.DriverName, ifname: str, address: str, host_address: str, socket_path: str,
                 pcap: str | None = None, address6: str | None = None, host_address6: str | None = None,
                 link_rate: float | None = None, ll_share: float | None = None,
                 strict: bool = False, config_file: str | None = None, policy_file: str | None = None,
                 metrics: str | None = None) -> config.Config:
    """The usnetd config `usnet up` writes, from its flags; ValueError names what is wrong.

    Every check is the config's own (usnet.domain.config, which hands the
    pacing keys to txsched.check_params): a flag is refused exactly when the
    same key in a config file would be. `strict` is `work_conserving =
    false`; without it the key is left out (the default, true).

    `config_file` (`--config`) is a usnetd config the written one starts from: its top-level
    keys, `[limits]`, `[[access]]`, `[[share]]`, `[[policy]]` and further `[[netif]]`s (not one
    named as the device `up` makes, and not another `socket`: `up` puts the socket in its run
    directory, where the other commands look). `policy_file` (`--policy`) adds its `[[policy]]`
    entries (and its `lease_ttl`, if it sets one). `metrics` becomes the `metrics` key (the
    address usnetd serves its metrics on).
    """
    if host_address6 and not address6:
        raise ValueError("--host-address6 needs --address6")
    check_addressing(address, host_address, address6, host_address6)
    base = _load_extra(config_file, "--config")
    pol = _load_extra(policy_file, "--policy")
    if base.socket not in (DEFAULT_SOCKET, socket_path):
        raise ValueError(f"--config {config_file} sets socket = {base.socket!r}, but `usnet up` serves on "
                         f"{socket_path}; leave socket out of the file (or start usnetd --config yourself)")
    if any(nc.name == ifname for nc in base.netif):
        raise ValueError(f"--config {config_file} has a [[netif]] named {ifname!r}, the one `usnet up` makes "
                         "from its flags; remove it from the file, or choose another --ifname")
    gateway = host_address.partition("/")[0]
    gateway6 = host_address6.partition("/")[0] if host_address6 else None
    nc = config.NetifConfig(name=ifname, address=address, driver=driver, ifname=ifname, gateway=gateway,
                            pcap=pcap, address6=address6, gateway6=gateway6, link_rate=link_rate,
                            ll_share=ll_share, work_conserving=False if strict else None)
    changes: dict = {"socket": socket_path, "netif": [nc, *base.netif], "policy": [*base.policy, *pol.policy]}
    if policy_file is not None and pol.lease_ttl != DEFAULT_TTL:
        changes["lease_ttl"] = pol.lease_ttl
    if metrics is not None:
        changes["metrics"] = metrics
    return msgspec.structs.replace(base, **changes)


def up(driver: config.DriverName, ifname: str, address: str, host_address: str, run_dir: str = RUN_DIR,
       pcap: str | None = None, timeout: float = 10.0, address6: str | None = None,
       host_address6: str | None = None, link_rate: float | None = None, ll_share: float | None = None,
       strict: bool = False, netns: str | None = None, config_file: str | None = None,
       policy_file: str | None = None, metrics: str | None = None) -> int:
    """Make the device, give the host its addresses, start usnetd on it.

    `netns`: the host end of the device (the TAP's link, the veth's other end), its addresses
    and so the kernel peer live in that network namespace (made if it does not exist, and then
    removed by `down`), not in the host's own (docs/architecture.md, "Devices and namespaces").
    usnetd stays where it was started, holding the TAP by its descriptor; a TAP's link moves
    once usnetd has attached to it, as opening a TAP by name in a namespace where it is not
    would make a new one.

    `address6`/`host_address6` add IPv6 (the host's defaults to ::1 of
    usnet's prefix); the host's IPv6 address is usnet's IPv6 gateway.
    `link_rate` (bits/s), `ll_share` and `strict` pace the netif and size
    its low-latency class (build_config). The flags are checked first, so
    nonsense is refused before anything is made, and without needing root.
    """
    paths = _paths(run_dir)
    if address6 and not host_address6:
        host_address6 = host_address6_for(address6)
    try:
        cfg = build_config(driver, ifname, address, host_address, paths["socket"], pcap=pcap, address6=address6,
                           host_address6=host_address6, link_rate=link_rate, ll_share=ll_share, strict=strict,
                           config_file=config_file, policy_file=policy_file, metrics=metrics)
    except ValueError as e:
        print(f"usnet up: {e}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("usnet up needs root (it creates a network device); from a venv: sudo $(which usnet) up ...",
              file=sys.stderr)
        return 1
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(paths["state"]):
        print(f"usnet is up already ({paths['state']}); usnet down first", file=sys.stderr)
        return 1
    host_if, made = _make_device(driver, ifname, netns)
    ns: NetNs | None = None
    proc: subprocess.Popen | None = None
    recorded = False
    try:  # all or nothing: an exception (a SIGTERM's SystemExit, a test's timeout) undoes what was made
        if netns is None:
            _host_side({ifname, host_if}, host_if, host_address, host_address6, driver == "xdp")
        else:
            from usnet.drivers.hostnet import NetNs

            ns = NetNs(netns)
            if driver != "tap":  # the veth's host end goes now; the TAP once usnetd holds it
                _to_netns(ns, host_if, host_address, host_address6, driver == "xdp")
        with open(paths["config"], "w") as f:
            f.write(config.dump(cfg))
        with open(paths["log"], "ab") as log:  # the daemon's stderr is its own copy of this fd
            proc = subprocess.Popen([sys.executable, "-m", "usnet.domain.usnetd", "--config", paths["config"]],
                                    stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        state = {"pid": proc.pid, "links": made, "socket": paths["socket"]}
        if ns is not None:
            state.update(netns=ns.name, netns_owned=ns.owned, netns_links=[])
        _write_state(paths["state"], state)
        recorded = True
        # bounded: a usnetd that hangs before its "ready" line is a failed start, not a hung `up`
        ready = select.select([proc.stdout], [], [], timeout)[0] if proc.stdout else []
        line = proc.stdout.readline() if ready and proc.stdout else b""
        if b"ready" not in line:
            print(f"usnetd did not start; see {paths['log']}", file=sys.stderr)
            down(run_dir)
            return 1
        if ns is not None and driver == "tap":
            _to_netns(ns, host_if, host_address, host_address6)
            _write_state(paths["state"], {**state, "links": [], "netns_links": [host_if]})
    except BaseException:
        if recorded:
            down(run_dir)
        else:
            if proc is not None:
                proc.kill()
                proc.wait()
            delete_links(made)
            if ns is not None and ns.owned:
                ns.close()
        raise
    v6 = f" and {address6}, host at {host_address6}" if address6 else ""
    nc = cfg.netif[0]
    paced = "" if nc.link_rate is None else (
        f", paced to {nc.link_rate:g} bit/s with {0.2 if nc.ll_share is None else nc.ll_share:g} of the slots "
        f"for low latency{' (strict)' if nc.work_conserving is False else ''}")
    where = "" if ns is None else f" in netns {ns.name}"
    print(f"usnet up: {ifname} ({driver}), usnet at {address}, host at {host_address}{v6}{where}{paced}, "
          f"usnetd pid {proc.pid}, socket {paths['socket']}")
    return 0

def down(run_dir: str = RUN_DIR, timeout: float = 10.0) -> int:
    paths = _paths(run_dir)
    if os.geteuid() != 0:
        print("usnet down needs root (it stops usnetd and removes a network device); from a venv: "
              "sudo $(which usnet) down", file=sys.stderr)
        return 1
    try:
        with open(paths["state"]) as f:
            state = json.load(f)
    except FileNotFoundError:
        print("usnet is not up", file=sys.stderr)
        return 1
    pid = state["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:  # not our child: poll for it to go
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    delete_links(state.get("links", []))
    if "netns" in state:
        from usnet.drivers.hostnet import NetNs, netns_exists

        if netns_exists(state["netns"]):
            ns = NetNs(state["netns"])
            with ns.entered():
                delete_links(state.get("netns_links", []))
            if state.get("netns_owned"):
                ns.owned = True
                ns.close()
    for k in ("state", "config"):
        try:
            os.unlink(paths[k])
        except FileNotFoundError:
            pass
    print("usnet down")
    return 0
