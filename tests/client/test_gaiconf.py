"""gai.conf as glibc's gaiconf_init reads it (usnet.client.gaiconf), and when it is read again.

The order glibc gives under several files is compared in tests/interop/test_names.py
(`test_getaddrinfo_sorts_by_gai_conf_as_glibc`); here: the tables each kind of line makes, lines
glibc skips, any bytes at all, and the once-per-process reading with ``reload yes``.
"""

from __future__ import annotations

import ipaddress
import os

from hypothesis import given
from hypothesis import strategies as st

from usnet.client import gaiconf
from usnet.client.gaiconf import DEFAULT, Policy, parse_gai_conf


def v6(a: str) -> int:
    return int(ipaddress.IPv6Address(a))


def mapped(a: str) -> int:
    return v6("::ffff:" + a)


def v4(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


def test_no_lines_of_a_kind_keep_its_built_in_table():
    assert parse_gai_conf(b"") == DEFAULT
    assert parse_gai_conf(b"# label ::/0 9\n\n   \n") == DEFAULT
    p = parse_gai_conf(b"precedence ::ffff:0:0/96 100\n")
    assert p.labels == DEFAULT.labels and p.scopes == DEFAULT.scopes


def test_one_precedence_line_replaces_the_whole_table_with_a_catch_all_of_40():
    p = parse_gai_conf(b"precedence ::ffff:0:0/96 100\n")
    assert p.precedence == ((mapped("0.0.0.0"), 96, 100), (0, 0, 40))
    assert p.precedence_of(mapped("10.0.0.1")) == 100
    assert p.precedence_of(v6("::1")) == 40  # the built-in ::1 50 is gone
    assert p.precedence_of(v6("2002::1")) == 40


def test_labels_longest_prefix_first_and_a_zero_bits_line_is_the_catch_all():
    p = parse_gai_conf(b"label ::/0 8\nlabel fd00::/8 3\nlabel fd00::/16 4\nlabel fd00:1::/16 5\n")
    assert p.labels == ((v6("fd00::"), 16, 4), (v6("fd00:1::"), 16, 5), (v6("fd00::"), 8, 3), (0, 0, 8))
    assert p.label(v6("fd00::1")) == 4
    assert p.label(v6("fd01::1")) == 3
    assert p.label(mapped("1.2.3.4")) == 8
    assert parse_gai_conf(b"label fd00::/8 3\n").label(v6("2001:db8::1")) == 1


def test_scopev4_in_either_form_and_its_catch_all_of_14():
    p = parse_gai_conf(b"scopev4 ::ffff:169.254.0.0/112 2\nscopev4 10.1.0.0/16 5\nscopev4 10.1.2.3 7\n")
    assert p.scopes == ((v4("10.1.2.3"), 32, 7), (v4("169.254.0.0"), 16, 2), (v4("10.1.0.0"), 16, 5), (0, 0, 14))
    assert [p.scope4(v4(a)) for a in ("10.1.2.3", "10.1.9.9", "169.254.1.1", "127.0.0.1")] == [7, 5, 2, 14]


def test_lines_glibc_skips_are_skipped():
    skipped = [
        b"precedence ::ffff:0:0/96 100x", b"precedence ::/129 5", b"precedence 1.2.3.4/8 5",
        b"precedence ::/0 2147483648", b"precedence ::/0 -1", b"precedence ::/+ 5", b"precedence ::/0 +",
        b"precedence ::/99999999999999999999999 5", b"Precedence ::/0 5", b"precedence\t", b"label x 1",
        b"scopev4 ::ffff:10.0.0.0/95 5", b"scopev4 ::1/128 5", b"scopev4 10.0.0.0/33 5", b"scopev4 10.0.0 5",
        b"scopev4 10.0.0.0/8 -3", b"#precedence ::/0 5", b"precedence # ::/0 5",
    ]
    for line in skipped:
        assert parse_gai_conf(line + b"\n") == DEFAULT, line


def test_numbers_are_read_as_strtoul_reads_them():
    # an empty word is 0; a sign is allowed; "-0" is 0; words after the second are ignored
    assert parse_gai_conf(b"precedence ::/0\n").precedence == ((0, 0, 0),)
    assert parse_gai_conf(b"precedence ::/ 7\n").precedence == ((0, 0, 7),)
    assert parse_gai_conf(b"precedence ::/0 +7 more words\n").precedence == ((0, 0, 7),)
    assert parse_gai_conf(b"precedence ::/-0 7\n").precedence == ((0, 0, 7),)
    assert parse_gai_conf(b"precedence ::/0 2147483647\n").precedence == ((0, 0, 2**31 - 1),)
    assert parse_gai_conf(b"precedence ::/0\x00 5\n").precedence == ((0, 0, 0),)  # a C string ends at NUL
    assert parse_gai_conf(b"label ::1 3\n").labels == ((1, 128, 3), (0, 0, 1))  # no /bits: the whole address


def test_reload_the_last_line_counts():
    assert parse_gai_conf(b"reload yes\n").reload
    assert not parse_gai_conf(b"reload yes\nreload no\n").reload
    assert not parse_gai_conf(b"reload YES\n").reload


@given(st.binary(max_size=400))
def test_any_bytes_give_a_policy(data):
    p = parse_gai_conf(data)
    assert isinstance(p, Policy)
    for table, width in ((p.labels, 128), (p.precedence, 128), (p.scopes, 32)):
        assert table[-1][1] == 0  # always a catch-all, tried last
        assert [e[1] for e in table] == sorted((e[1] for e in table), reverse=True)
        assert all(0 <= bits <= width and 0 <= v <= 2**31 - 1 for _a, bits, v in table)
    assert isinstance(p.label(0), int) and isinstance(p.scope4(0), int)


_WORDS = st.sampled_from([
    "label", "precedence", "scopev4", "reload", "yes", "no", "::/0", "::1/128", "::ffff:0:0/96", "fd00::/8",
    "2001:db8::/32", "10.0.0.0/8", "::ffff:10.0.0.0/104", "169.254.0.0", "/", "+5", "-0", "5", "100", "0x5",
    "2147483648", "#", "\t", "\x00", "é", "1e3",
])


@given(st.lists(st.lists(_WORDS, max_size=5).map(" ".join), max_size=12).map("\n".join))
def test_near_valid_files_give_a_policy_whose_lookups_answer(text):
    p = parse_gai_conf(text)
    for addr in (v6("::1"), mapped("10.1.2.3"), v6("fd00::1"), v6("2001:db8::1")):
        assert isinstance(p.label(addr), int) and isinstance(p.precedence_of(addr), int)
    assert isinstance(p.scope4(v4("10.1.2.3")), int)


def _write(path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_file_is_read_once_and_again_only_with_reload_yes(tmp_path):
    """glibc reads gai.conf at the first sort of the process and keeps it; with ``reload yes`` a
    sort whose file has another modification time reads it again, and a file gone means the
    built-in tables (the flag kept, so a new file is read when it comes)."""
    once, again = tmp_path / "once.conf", tmp_path / "again.conf"
    _write(once, "precedence ::ffff:0:0/96 100\n", 10**18)
    _write(again, "reload yes\nprecedence ::ffff:0:0/96 100\n", 10**18)
    assert gaiconf.policy(str(once)).precedence_of(mapped("1.2.3.4")) == 100
    assert gaiconf.policy(str(again)).precedence_of(mapped("1.2.3.4")) == 100
    _write(once, "precedence ::ffff:0:0/96 7\n", 2 * 10**18)
    _write(again, "reload yes\nprecedence ::ffff:0:0/96 7\n", 2 * 10**18)
    assert gaiconf.policy(str(once)).precedence_of(mapped("1.2.3.4")) == 100  # kept, as glibc keeps it
    assert gaiconf.policy(str(again)).precedence_of(mapped("1.2.3.4")) == 7
    again.unlink()
    assert gaiconf.policy(str(again)).precedence == DEFAULT.precedence
    _write(again, "precedence ::ffff:0:0/96 9\n", 3 * 10**18)
    assert gaiconf.policy(str(again)).precedence_of(mapped("1.2.3.4")) == 9
    _write(again, "precedence ::ffff:0:0/96 11\n", 4 * 10**18)
    assert gaiconf.policy(str(again)).precedence_of(mapped("1.2.3.4")) == 9  # that file said no reload
    assert gaiconf.policy(str(tmp_path / "none.conf")) == DEFAULT
