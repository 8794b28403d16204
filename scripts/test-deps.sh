#!/bin/sh
# What the tests need from the system: the real peers (ping, nc, iperf3, tshark, curl, wrk, dnsmasq).
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
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq $need >/dev/null
else
    echo "test-deps: not root or no apt-get; missing:$need (privileged tests will skip)" >&2
fi
