#!/bin/sh
# What the tests need from the system: the real peers (ping, nc, iperf3, tshark, curl, wrk, dnsmasq,
# redis-server, memcached, sshd, postgres, mosquitto).
# Installed when we are root with apt; otherwise said, and the privileged tests skip (or fail under CI).
set -e
need=""
command -v ping >/dev/null 2>&1 || need="$need iputils-ping"
command -v nc >/dev/null 2>&1 || need="$need netcat-openbsd"
command -v iperf3 >/dev/null 2>&1 || need="$need iperf3"
command -v tshark >/dev/null 2>&1 || need="$need tshark"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v dnsmasq >/dev/null 2>&1 || need="$need dnsmasq-base"  # the binary only: the dnsmasq package would start a host daemon
# servers the tests start themselves in their namespaces (tests/interop/test_programs11.py); their
# packages' own host daemons are not wanted: policy-rc.d says no to starting them, where none does already
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v memcached >/dev/null 2>&1 || need="$need memcached"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"  # tests/interop/test_programs12.py (not on PATH for non-root users)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need="$need postgresql"  # tests/interop/test_programs13.py
[ -x /usr/sbin/mosquitto ] || need="$need mosquitto"  # tests/interop/test_programs15.py (not on PATH for non-root users)
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # (removed after: only for this install)
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq $need >/dev/null
else
    echo "test-deps: not root or no apt-get; missing:$need (privileged tests will skip)" >&2
fi
