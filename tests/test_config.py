"""Loading stations.toml: line keys, stations, tags and their errors (SPEC §1, §2, §4, §8)."""

from __future__ import annotations

import gc
import shutil
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kom._address import Kind
from kom._config import Config, Endpoint, LineConfig, Tls, Will, collector_paused, load, loads
from kom._errors import ConfigError, KomError
from kom._model import ValueType
from kom._timemask import TimeMask, Zone
from kom._topic import TopicFilter

EXAMPLES = Path(__file__).parent.parent / "examples"
LINE = '[line]\nhost = "broker"\n'


def config(text: str, **kwargs: Any) -> Config:
    """The configuration of dedented TOML text."""
    return loads(textwrap.dedent(text), **kwargs)


def errors(text: str, **kwargs: Any) -> tuple[str, ...]:
    """The errors listed by the ConfigError that dedented TOML text raises."""
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), **kwargs)
    return info.value.errors


def line_of(extra: str) -> LineConfig:
    """The line of a file whose [line] has a host and the TOML lines `extra`."""
    return loads(LINE + extra).lines[0]


def station_file(*tags: str, line: str = "", address: str = "dev/1") -> str:
    """A file with one line and one station whose tags are the TOML bodies `tags`."""
    text = LINE + line + f'\n[[station]]\nname = "s"\naddress = {address!r}\n'
    for tag in tags:
        text += "\n[[station.tag]]\n" + textwrap.dedent(tag).strip() + "\n"
    return text


# --- line keys: defaults, accepted values, refused values ---------------------------------


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        ("tls", None),
        ("transport", "tcp"),
        ("ws_path", "/mqtt"),
        ("protocol", "3.1.1"),
        ("session_expiry", None),
        ("receive_maximum", 65535),
        ("maximum_packet_size", None),
        ("topic_alias_maximum", 64),
        ("user_properties", ()),
        ("retain_handling", 0),
        ("username", None),
        ("password", None),
        ("clean_session", False),
        ("keep_alive", 0),
        ("ping_interval", 60),
        ("reply_timeout", 20),
        ("topic_filters", (TopicFilter("#"),)),
        ("subscribe_qos", 1),
        ("publish_qos", 0),
        ("publish_retain", False),
        ("will", None),
        ("payload_type", "text"),
        ("time_field", None),
        ("time_mask", TimeMask.parse("yyyy-mm-dd hh:mi:ss.mss")),
        ("time_zone", Zone.LOCAL),
        ("ignore_missing_time", False),
        ("debug", False),
        ("max_payload", 1 << 20),
        ("client_id_derived", True),
        ("name", "line"),
    ],
)
def test_line_default(attribute: str, default: object) -> None:
    """A line that gives only its host has SPEC §2's default for every other key."""
    assert getattr(line_of(""), attribute) == default


@pytest.mark.parametrize(
    ("toml", "attribute", "expected"),
    [
        ('transport = "websockets"', "transport", "websockets"),
        ('ws_path = "/ws"', "ws_path", "/ws"),
        ('protocol = "5"', "protocol", "5"),
        ("protocol = 5", "protocol", "5"),
        ('protocol = "5.0"', "protocol", "5"),
        ('protocol = "3.1.1"', "protocol", "3.1.1"),
        ('protocol = "auto"', "protocol", "auto"),
        ('session_expiry = "never"', "session_expiry", 0xFFFF_FFFF),
        ("session_expiry = 3600", "session_expiry", 3600),
        ("receive_maximum = 10", "receive_maximum", 10),
        ("maximum_packet_size = 4096", "maximum_packet_size", 4096),
        ("topic_alias_maximum = 0", "topic_alias_maximum", 0),
        ('user_properties = { site = "a" }', "user_properties", (("site", "a"),)),
        ("no_local = true", "no_local", True),
        ("retain_as_published = true", "retain_as_published", True),
        ("retain_handling = 2", "retain_handling", 2),
        ('username = "kom"', "username", "kom"),
        ('client_id = "plant-a"', "client_id", "plant-a"),
        ("clean_session = true", "clean_session", True),
        ("keep_alive = 65535", "keep_alive", 65535),
        ("ping_interval = 0", "ping_interval", 0),
        ("ping_interval = 2.5", "ping_interval", 2.5),
        ("reply_timeout = 0", "reply_timeout", 0),
        ('topic_filter = "a/+/b"', "topic_filters", (TopicFilter("a/+/b"),)),
        (
            'topic_filter = ["a/#", "$share/g/b/+"]',
            "topic_filters",
            (TopicFilter("a/#"), TopicFilter("$share/g/b/+")),
        ),
        ("subscribe_qos = 2", "subscribe_qos", 2),
        ("publish_qos = 1", "publish_qos", 1),
        ("publish_retain = true", "publish_retain", True),
        ('will = { topic = "kom/status", message = "gone" }', "will", Will("kom/status", b"gone")),
        (
            'will = { topic = "k", message = "x", qos = 2, retain = true }',
            "will",
            Will("k", b"x", 2, True),
        ),
        ('payload_type = "json"', "payload_type", "json"),
        ('time_field = "Agent.Time"', "time_field", ("Agent", "Time")),
        ('time_field = "JA=rx[2].t"', "time_field", ("rx", 1, "t")),
        ('time_mask = "ISO"', "time_mask", TimeMask.parse("ISO")),
        ('time_mask = "UNIXMS"', "time_mask", TimeMask.parse("UNIXMS")),
        ('time_mask = "dd.mm.yyyy hh:mi"', "time_mask", TimeMask.parse("dd.mm.yyyy hh:mi")),
        ('time_zone = "UTC"', "time_zone", Zone.UTC),
        ('time_zone = "+01:00"', "time_zone", Zone.parse("+01:00")),
        ("ignore_missing_time = true", "ignore_missing_time", True),
        ("debug = true", "debug", True),
        ("max_payload = 1024", "max_payload", 1024),
        ("max_held = 5", "max_held", 5),
    ],
)
def test_line_key_accepted(toml: str, attribute: str, expected: object) -> None:
    """Each line key of SPEC §2 is read into the line's configuration."""
    assert getattr(line_of(toml), attribute) == expected


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("keep_alive = 70000", "line.keep_alive: expected 0..65535, found 70000"),
        ("keep_alive = -1", "line.keep_alive: expected 0..65535, found -1"),
        ("keep_alive = 1.5", "line.keep_alive: expected an integer, found 1.5"),
        ("keep_alive = true", "line.keep_alive: expected an integer, found True"),
        ("ping_interval = 3601", "line.ping_interval: expected 0..3600, found 3601"),
        ("ping_interval = -0.5", "line.ping_interval: expected 0..3600, found -0.5"),
        ("reply_timeout = -1", "line.reply_timeout: expected 0..3600, found -1"),
        ('reply_timeout = "20"', "line.reply_timeout: expected an integer or a number, found '20'"),
        ("port = 0", "line.port: expected 1..65535, found 0"),
        ("port = 65536", "line.port: expected 1..65535, found 65536"),
        ("subscribe_qos = 3", "line.subscribe_qos: expected 0..2, found 3"),
        ("publish_qos = -1", "line.publish_qos: expected 0..2, found -1"),
        ('publish_retain = "yes"', "line.publish_retain: expected true or false, found 'yes'"),
        ("clean_session = 1", "line.clean_session: expected true or false, found 1"),
        ("debug = 0", "line.debug: expected true or false, found 0"),
        ('transport = "udp"', "line.transport: expected one of 'tcp', 'websockets', found 'udp'"),
        ('protocol = "3.1"', "line.protocol: expected '3.1.1', '5' or 'auto', found '3.1'"),
        (
            'session_expiry = "soon"',
            "line.session_expiry: expected seconds (0..4294967294) or 'never', found 'soon'",
        ),
        ("receive_maximum = 0", "line.receive_maximum: expected 1..65535, found 0"),
        ("retain_handling = 3", "line.retain_handling: expected 0..2, found 3"),
        ("user_properties = { n = 1 }", "line.user_properties.n: expected a string, found 1"),
        (
            'payload_type = "xml"',
            "line.payload_type: expected one of 'text', 'json', 'sparkplug_b', found 'xml'",
        ),
        ('topic_filter = "a/#/b"', "line.topic_filter: '#' must be a whole last level"),
        ('topic_filter = ["ok", "a+"]', "line.topic_filter[2]: '+' must be a whole level"),
        ('topic_filter = ["ok", 5]', "line.topic_filter[2]: expected a string, found 5"),
        ("topic_filter = []", "line.topic_filter: at least one topic filter is needed"),
        ('topic_filter = "$share/g"', "line.topic_filter: a shared subscription is"),
        ('time_zone = "CET"', "line.time_zone: unknown time zone 'CET'"),
        ('time_mask = "no tokens"', "line.time_mask: "),
        ('time_field = "a..b"', "line.time_field: empty key at position 3"),
        ("will = { qos = 1 }", "line.will.topic: required"),
        ('will = { topic = "a/+" }', "line.will.topic: a topic may not contain wildcards"),
        ('will = { topic = "k", qos = 3 }', "line.will.qos: expected 0..2, found 3"),
        ("max_payload = 0", "line.max_payload: expected 1..268435456, found 0"),
        ("max_held = 0", "line.max_held: expected 1..10000000, found 0"),
        (
            "reconnect_min = 10\nreconnect_max = 5",
            "line.reconnect_max: must not be below reconnect_min (10)",
        ),
        ('name = "a b"', "line.name: a name matches [A-Za-z_][A-Za-z0-9_-]*, found 'a b'"),
        ("client_id = 7", "line.client_id: expected a string, found 7"),
    ],
)
def test_line_key_refused(toml: str, message: str) -> None:
    """A refused line value is one error naming its key path, what was expected and found."""
    found = errors(LINE + toml)
    assert len(found) == 1, found
    assert found[0].startswith(message), found


def test_line_host_required() -> None:
    """A line without a host is refused with the key path of the missing key."""
    assert errors("[line]\nport = 1883\n") == ("line.host: required",)


def test_file_without_line() -> None:
    """A file with stations but no line says that a line is required."""
    found = errors('[[station]]\nname = "s"\naddress = "a"\n')
    assert found[0].startswith("line: required")


def test_toml_syntax_error() -> None:
    """Text that is no TOML is one ConfigError, not a TOMLDecodeError."""
    assert errors("[line\nhost =")[0].startswith("TOML syntax")


# --- hosts, ports, TLS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "endpoints"),
    [
        ('host = "a"', [("a", 1883)]),
        ('host = "a;b"', [("a", 1883), ("b", 1883)]),
        ('host = "a,b"', [("a", 1883), ("b", 1883)]),
        ('host = " a ; b:1884 , c "', [("a", 1883), ("b", 1884), ("c", 1883)]),
        ('host = ["a", "b:1884"]', [("a", 1883), ("b", 1884)]),
        ('host = "a:1884"', [("a", 1884)]),
        ('host = "10.0.0.5;10.0.0.6"', [("10.0.0.5", 1883), ("10.0.0.6", 1883)]),
        ('host = "[::1]:1883"', [("::1", 1883)]),
        ('host = "[::1]:2000;a"', [("::1", 2000), ("a", 1883)]),
        ('host = "[fe80::1]"', [("fe80::1", 1883)]),
        ('host = "a;b:1"\nport = 2000', [("a", 2000), ("b", 1)]),
        ('host = "a"\ntls = true', [("a", 8883)]),
        ('host = "a:1883"\ntls = true', [("a", 1883)]),
        ('host = "a"\ntls = true\nport = 443', [("a", 443)]),
    ],
)
def test_hosts(toml: str, endpoints: list[tuple[str, int]]) -> None:
    """Redundant addresses by `;`, `,` or a list, each with its own port or the line's default."""
    line = loads("[line]\n" + toml).lines[0]
    assert line.endpoints == tuple(Endpoint(host, port) for host, port in endpoints)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('host = ""', "line.host: an address is a non-empty string"),
        ('host = "a;;b"', "line.host: an address is a non-empty string"),
        ('host = "a:99999"', "line.host: port out of range in 'a:99999'"),
        ('host = "broker:1883:1"', "line.host: expected HOST or HOST:PORT, found 'broker:1883:1'"),
        ("host = [1]", "line.host: an address is a non-empty string, found 1"),
        ("host = []", "line.host: at least one broker address is needed"),
        ("host = 5", "line.host: expected a string or a list, found 5"),
    ],
)
def test_hosts_refused(toml: str, message: str) -> None:
    """A malformed broker address is an error on `line.host`."""
    found = errors("[line]\n" + toml)
    assert any(e.startswith(message) for e in found), found


def test_endpoint_str() -> None:
    """An endpoint prints as host:port, with an IPv6 host in brackets."""
    assert [str(e) for e in line_of("").endpoints] == ["broker:1883"]
    assert str(Endpoint("::1", 1883)) == "[::1]:1883"


def test_tls_files_relative_to_config(tmp_path: Path) -> None:
    """TLS file names are read next to the configuration file, and default verify is on."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "stations.toml"
    path.write_text(
        LINE + 'tls = { ca_file = "ca.pem", cert_file = "cert.pem", key_file = "key.pem" }\n'
    )
    line = load(path).lines[0]
    assert line.tls == Tls(
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), True
    )
    assert line.endpoints[0].port == 8883


@pytest.mark.parametrize(
    ("toml", "messages"),
    [
        ('{ ca_file = "missing-ca.pem" }', ["line.tls.ca_file: no such file: "]),
        (
            '{ cert_file = "c.pem", key_file = "k.pem" }',
            ["line.tls.cert_file: no such file: ", "line.tls.key_file: no such file: "],
        ),
        ('{ verify = "no" }', ["line.tls.verify: expected true or false, found 'no'"]),
        ('{ ca_fil = "x" }', ["line.tls.ca_fil: unknown key (did you mean 'ca_file'?)"]),
        ('"yes"', ["line.tls: expected a table or true or false, found 'yes'"]),
    ],
)
def test_tls_refused(tmp_path: Path, toml: str, messages: list[str]) -> None:
    """Missing TLS files and malformed TLS tables are errors naming the key."""
    found = errors(LINE + f"tls = {toml}\n", base_dir=tmp_path)
    assert len(found) == len(messages), found
    for error, message in zip(found, messages, strict=True):
        assert error.startswith(message), found


def test_tls_key_without_cert(tmp_path: Path) -> None:
    """A key file alone is refused: it needs its certificate."""
    (tmp_path / "k.pem").write_text("x")
    found = errors(LINE + 'tls = { key_file = "k.pem" }\n', base_dir=tmp_path)
    assert found == ("line.tls.cert_file: a key_file needs its cert_file",)


# --- passwords -----------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


def _assert_hidden(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password from `{ env = ... }` is read but appears in no repr or str of the config."""
    monkeypatch.setenv("KOM_TEST_PASSWORD", SECRET)
    cfg = loads(LINE + 'username = "u"\npassword = { env = "KOM_TEST_PASSWORD" }\n')
    line = cfg.lines[0]
    assert line.password is not None
    assert line.password.value == SECRET
    assert line.password.source == "env:KOM_TEST_PASSWORD"
    _assert_hidden(repr(cfg), str(cfg), repr(line), str(line.password), repr(line.password))


def test_password_from_file(tmp_path: Path) -> None:
    """A password from `{ file = ... }` loses its final newline and is hidden like any other."""
    (tmp_path / "pw").write_text(SECRET + "\n")
    path = tmp_path / "stations.toml"
    path.write_text(LINE + 'password = { file = "pw" }\n')
    cfg = load(path)
    assert cfg.lines[0].password is not None
    assert cfg.lines[0].password.value == SECRET
    _assert_hidden(repr(cfg), str(cfg))


def test_inline_password_hidden() -> None:
    """Even a password written into the file is not shown by the configuration's repr."""
    cfg = loads(LINE + f'password = "{SECRET}"\n')
    assert cfg.lines[0].password is not None
    assert cfg.lines[0].password.value == SECRET
    _assert_hidden(repr(cfg), str(cfg))


def test_password_not_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigError of a file with secret passwords shows none of them."""
    monkeypatch.setenv("KOM_TEST_PASSWORD", SECRET)
    (tmp_path / "pw").write_text(SECRET)
    text = f"""
        [[line]]
        name = "a"
        host = "x"
        password = {{ env = "KOM_TEST_PASSWORD" }}
        keep_alive = -1

        [[line]]
        name = "b"
        host = "y"
        password = {{ file = "pw" }}
        port = 0

        [[line]]
        name = "c"
        host = "z"
        password = ["{SECRET}"]
    """
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), base_dir=tmp_path)
    assert len(info.value.errors) == 3
    _assert_hidden(str(info.value), repr(info.value), *info.value.errors)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('{ env = "KOM_TEST_UNSET_VARIABLE" }', "environment variable 'KOM_TEST_UNSET_VARIABLE'"),
        ('{ file = "no-such-password-file" }', "cannot read "),
        ('{ env = "A", file = "b" }', "give exactly one of"),
        ("{}", "give exactly one of"),
        ('{ envv = "A" }', "line.password.envv: unknown key (did you mean 'env'?)"),
    ],
)
def test_password_refused(tmp_path: Path, toml: str, message: str) -> None:
    """An unset variable, an unreadable file or a malformed table is an error on the password."""
    found = errors(LINE + f"password = {toml}\n", base_dir=tmp_path)
    assert any(message in e for e in found), found
    assert all(e.startswith("line.password") for e in found), found


# --- the client id -------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_client_id_derived_is_stable(tmp_path: Path) -> None:
    """The derived client id is the same every time the same file is loaded."""
    path = _write(tmp_path / "stations.toml", LINE)
    first, second = load(path).lines[0], load(path).lines[0]
    assert first.client_id_derived
    assert first.client_id == second.client_id
    assert first.client_id.startswith("kom-")


def test_client_id_same_file_any_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same file named by an absolute or a relative path gets one client id."""
    path = _write(tmp_path / "etc" / "kom" / "stations.toml", LINE)
    absolute = load(path).lines[0].client_id
    monkeypatch.chdir(tmp_path)
    assert load(Path("etc/kom/stations.toml")).lines[0].client_id == absolute
    monkeypatch.chdir(tmp_path / "etc")
    assert load("kom/stations.toml").lines[0].client_id == absolute
    monkeypatch.chdir(tmp_path / "etc" / "kom")
    assert load("stations.toml").lines[0].client_id == absolute


def test_client_id_differs_between_files(tmp_path: Path) -> None:
    """Two installations (two configuration files) never derive the same client id."""
    one = _write(tmp_path / "one" / "stations.toml", LINE)
    two = tmp_path / "two" / "stations.toml"
    two.parent.mkdir()
    shutil.copy(one, two)
    assert load(one).lines[0].client_id != load(two).lines[0].client_id


def test_client_id_differs_between_lines(tmp_path: Path) -> None:
    """Two lines of one file derive two client ids."""
    path = _write(
        tmp_path / "stations.toml",
        '[[line]]\nname = "a"\nhost = "x"\n[[line]]\nname = "b"\nhost = "x"\n',
    )
    a, b = load(path).lines
    assert a.client_id != b.client_id


def test_client_id_explicit_and_empty() -> None:
    """A given client id is kept; an empty one lets the broker choose and forces a clean session."""
    given = line_of('client_id = "mine"')
    assert (given.client_id, given.client_id_derived, given.effective_clean_session) == (
        "mine",
        False,
        False,
    )
    empty = line_of('client_id = ""')
    assert empty.client_id == ""
    assert not empty.client_id_derived
    assert not empty.clean_session
    assert empty.effective_clean_session


# --- several lines -------------------------------------------------------------------------

TWO_LINES = """
    [[line]]
    name = "plant"
    host = "a"

    [[line]]
    name = "lab"
    host = "b"
    payload_type = "json"

    [[station]]
    name = "s1"
    line = "plant"
    address = "x/1"

    [[station]]
    name = "s2"
    line = "lab"
    address = "x/1"

    [[station.tag]]
    name = "t"
    type = "Ai"
    address = "JA=v"
"""


def test_several_lines() -> None:
    """`[[line]]` tables with names, stations choosing theirs with `line`; one address per line."""
    cfg = config(TWO_LINES)
    assert [line.name for line in cfg.lines] == ["plant", "lab"]
    assert [s.name for s in cfg.stations_of("plant")] == ["s1"]
    assert [s.name for s in cfg.stations_of("lab")] == ["s2"]
    assert cfg.line("lab").endpoints == (Endpoint("b", 1883),)
    station, tag = cfg.find_tag("s2.t")
    assert (station.name, tag.name, tag.type) == ("s2", "t", ValueType.Ai)
    with pytest.raises(KeyError):
        cfg.find_tag("s2.nothing")


def test_single_line_station_needs_no_line() -> None:
    """With one `[line]` a station belongs to it without saying so."""
    cfg = loads(LINE + '[[station]]\nname = "s"\naddress = "a"\n')
    assert cfg.stations[0].line == "line"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[line]]\nname = "a"\nhost = "x"\n[[line]]\nname = "b"\nhost = "y"\n'
            '[[station]]\nname = "s"\naddress = "t"\n',
            "station[1].line: required when the file has several lines",
        ),
        (
            LINE + '[[station]]\nname = "s"\nline = "other"\naddress = "t"\n',
            "station[1].line: no line named 'other'",
        ),
        ('[[line]]\nhost = "x"\n[[line]]\nname = "b"\nhost = "y"\n', "line[1].name: required"),
        (
            '[[line]]\nname = "a"\nhost = "x"\n[[line]]\nname = "a"\nhost = "y"\n',
            "line[2].name: a second line named 'a'",
        ),
        ("line = []\n", "line: at least one line is needed"),
        ('[[line]]\nname = "a"\nhost = "x"\n[[line]]\nname = "b"\n', "line[2].host: required"),
    ],
)
def test_several_lines_refused(text: str, message: str) -> None:
    """Station-to-line mistakes and line name clashes are errors with their key paths."""
    assert message in errors(text)


# --- unknown keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LINE + "keep_alivee = 5\n", "line.keep_alivee: unknown key (did you mean 'keep_alive'?)"),
        (LINE + "hots = 5\n", "line.hots: unknown key (did you mean 'host'?)"),
        (LINE + "zzz = 5\n", "line.zzz: unknown key"),
        (
            LINE + '[[stations]]\nname = "s"\n',
            "stations: unknown key (did you mean 'station'?)",
        ),
        (
            LINE + '[[station]]\nname = "s"\nadress = "a"\naddress = "b"\n',
            "station[1].adress: unknown key (did you mean 'address'?)",
        ),
        (
            station_file('name = "t"\ntype = "TxtI"\naddress = "IN_DATA"\nunits = "V"'),
            "station[1].tag[1].units: unknown key (did you mean 'unit'?)",
        ),
        (
            LINE + 'will = { topic = "a", mesage = "b" }\n',
            "line.will.mesage: unknown key (did you mean 'message'?)",
        ),
        (
            station_file('name = "t"\ntype = "Do"\npublish = { topic = "a", paylod = "b" }'),
            "station[1].tag[1].publish.paylod: unknown key (did you mean 'payload'?)",
        ),
    ],
)
def test_unknown_key(text: str, message: str) -> None:
    """A misspelt key at any level is an error, with the nearest known key when there is one."""
    assert message in errors(text)


# --- stations and tags ---------------------------------------------------------------------


def test_every_error_collected() -> None:
    """Three mistakes in three places are three errors in one ConfigError, by key path."""
    text = """
        [line]
        host = "broker"
        keep_alive = -5

        [[station]]
        name = "ok"
        address = "a"

        [[station]]
        name = "s2"
        address = "b"
        mode = "maybe"

        [[station.tag]]
        name = "t1"
        type = "TxtI"
        address = "IN_TOPIC"

        [[station.tag]]
        name = "t2"
        type = "TxtI"
        address = "IN_DATA"

        [[station.tag]]
        name = "t3"
        type = "Ai"
        address = "JX=foo"
    """
    with pytest.raises(ConfigError) as info:
        config(text, source="stations.toml")
    error = info.value
    assert len(error.errors) == 3
    paths = sorted(e.split(": ", 1)[0] for e in error.errors)
    assert paths == ["line.keep_alive", "station[2].mode", "station[2].tag[3].address"]
    assert (
        "station[2].tag[3].address: unknown address 'JX=foo' (expected IN_TOPIC, IN_DATA, "
        "IN_ID, JA=, JP=, TOPIC=, BIN=, SPB=, PROP=, ACK_ID, OUT_TOPIC, OUT_VALUE)"
    ) in error.errors
    assert str(error).startswith("stations.toml: 3 configuration errors\n")
    assert all(f"\n  {e}" in str(error) for e in error.errors)
    assert error.source == "stations.toml"
    assert isinstance(error, KomError)
    assert isinstance(error, ValueError)


def test_station_defaults() -> None:
    """A station is `on`, has no will, and takes its line's payload type unless it sets one."""
    cfg = loads(LINE + '[[station]]\nname = "s"\naddress = "dev/(?P<id>[^/]+)"\n')
    station = cfg.stations[0]
    assert (station.mode, station.will_topic, station.will_payload) == ("on", None, None)
    assert station.payload_type is None
    assert station.regex is not None
    assert station.regex.groupindex == {"id": 1}


@pytest.mark.parametrize(
    ("station", "attribute", "expected"),
    [
        ('mode = "off"', "mode", "off"),
        ('mode = "simulation"', "mode", "simulation"),
        ('will_topic = "d/status"', "will_topic", "d/status"),
        ('will_topic = "d/status"\nwill_payload = "offline"', "will_payload", b"offline"),
        ('will_topic = "d/status"\nwill_payload = ""', "will_payload", None),
        ('payload_type = "json"', "payload_type", "json"),
    ],
)
def test_station_key(station: str, attribute: str, expected: object) -> None:
    """Station keys are read; an empty will payload means any payload."""
    cfg = loads(LINE + f'[[station]]\nname = "s"\naddress = "a"\n{station}\n')
    assert getattr(cfg.stations[0], attribute) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            LINE + '[[station]]\nname = "s1"\naddress = "a/b"\n'
            '[[station]]\nname = "s2"\naddress = "a/b"\n',
            "station[2].address: station 's1' of line 'line' has the same address",
        ),
        (
            LINE
            + '[[station]]\nname = "s"\naddress = "a"\n[[station]]\nname = "s"\naddress = "b"\n',
            "station[2].name: a second station named 's'",
        ),
        (LINE + '[[station]]\nname = "s"\naddress = ""\n', "station[1].address: may not be empty"),
        (LINE + '[[station]]\naddress = "a"\n', "station[1].name: required"),
        (LINE + '[[station]]\nname = "s"\n', "station[1].address: required"),
        (
            LINE + '[[station]]\nname = "1s"\naddress = "a"\n',
            "station[1].name: a name matches [A-Za-z_][A-Za-z0-9_-]*, found '1s'",
        ),
        (
            LINE + '[[station]]\nname = "s"\naddress = "a"\nmode = "maybe"\n',
            "station[1].mode: expected one of 'on', 'off', 'simulation', found 'maybe'",
        ),
        (
            station_file(
                'name = "t"\ntype = "TxtI"\naddress = "IN_DATA"',
                'name = "t"\ntype = "TxtI"\naddress = "IN_TOPIC"',
            ),
            "station[1].tag[2].name: a second tag named 't' in this station",
        ),
        (
            station_file('name = "t"\ntype = "Xi"\naddress = "IN_DATA"'),
            "station[1].tag[1].type: unknown type 'Xi' (expected Ai, Ao, Ci, Co, Di, Do, Qi, "
            "TxtI, TxtO, TiA, ToA, TiR, ToR)",
        ),
        (
            station_file('name = "t"\ntype = "TxtI"'),
            "station[1].tag[1].address: required",
        ),
        (
            station_file(
                'name = "t"\ntype = "Ai"\naddress = "JA=a..b"', line='payload_type = "json"'
            ),
            "station[1].tag[1].address: empty key at position 3 in 'a..b'",
        ),
        (
            station_file(
                'name = "t"\ntype = "Ai"\naddress = "JP=$.["', line='payload_type = "json"'
            ),
            "station[1].tag[1].address: bad JSONPath '$.['",
        ),
    ],
)
def test_station_refused(text: str, message: str) -> None:
    """Station and tag mistakes are errors on their key paths (SPEC §3, §4)."""
    found = errors(text)
    assert any(e.startswith(message) for e in found), found


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (
            ['name = "t"\ntype = "TxtO"\naddress = "OUT_TOPIC"'],
            "station[1].tag: OUT_TOPIC and OUT_VALUE go together",
        ),
        (
            ['name = "v"\ntype = "TxtO"\naddress = "OUT_VALUE"'],
            "station[1].tag: OUT_TOPIC and OUT_VALUE go together",
        ),
        (
            [
                'name = "a"\ntype = "Co"\naddress = "ACK_ID"',
                'name = "b"\ntype = "Co"\naddress = "ACK_ID"',
            ],
            "station[1].tag: at most one tag with address ACK_ID",
        ),
        (
            [
                'name = "a"\ntype = "Ci"\naddress = "IN_ID"',
                'name = "b"\ntype = "Ci"\naddress = "IN_ID"',
            ],
            "station[1].tag: at most one tag with address IN_ID",
        ),
    ],
)
def test_station_tag_combinations_refused(tags: list[str], message: str) -> None:
    """OUT_TOPIC needs OUT_VALUE and the other way round; ACK_ID and IN_ID are unique."""
    found = errors(station_file(*tags))
    assert any(e.startswith(message) for e in found), found


def test_topic_group_must_exist() -> None:
    """A TOPIC= tag names a group of the station's regular expression."""
    tag = 'name = "t"\ntype = "TxtI"\naddress = "TOPIC=dev"'
    found = errors(station_file(tag, address="devices/(?P<device>[^/]+)/x"))
    assert found == ("station[1].tag[1].address: the station address has no group named 'dev'",)
    found = errors(station_file(tag, address="devices/x"))
    assert found == ("station[1].tag[1].address: the station address has no group named 'dev'",)
    cfg = loads(station_file(tag, address="devices/(?P<dev>[^/]+)/x"))
    address = cfg.stations[0].tags[0].address
    assert address is not None
    assert (address.kind, address.group) == (Kind.TOPIC, "dev")


@pytest.mark.parametrize("address", ["JA=a.b", "JP=$.a", "JA=$"])
def test_json_address_needs_json_line(address: str) -> None:
    """JA= and JP= need a JSON payload: on a text line they are refused."""
    tag = f'name = "t"\ntype = "Ai"\naddress = "{address}"'
    kind = address[:3]
    assert errors(station_file(tag)) == (
        f'station[1].tag[1].address: {kind} needs payload_type = "json" on the line',
    )
    assert loads(station_file(tag, line='payload_type = "json"')).stations[0].tags[0].address


def test_station_payload_type_overrides_line() -> None:
    """A station with `payload_type = "json"` may have JA= tags on a text line."""
    text = LINE + (
        '[[station]]\nname = "s"\naddress = "a"\npayload_type = "json"\n'
        '[[station.tag]]\nname = "t"\ntype = "Ai"\naddress = "JA=v"\n'
    )
    assert loads(text).stations[0].payload_type == "json"


@pytest.mark.parametrize(
    ("address", "value_type", "accepted"),
    [
        ("IN_ID", "Ci", True),
        ("IN_ID", "Ai", False),
        ("IN_ID", "Co", False),
        ("ACK_ID", "Co", True),
        ("ACK_ID", "Ci", False),
        ("IN_TOPIC", "TxtI", True),
        ("IN_TOPIC", "TxtO", False),
        ("IN_DATA", "TxtI", True),
        ("IN_DATA", "Ai", False),
        ("in_data", "TxtI", True),
        ("JA=v", "Ai", True),
        ("JA=v", "Qi", True),
        ("JA=v", "TiR", True),
        ("JA=v", "Ao", True),
        ("JA=v", "Do", True),
        ("JA=v", "ToA", True),
        ("JP=$.v", "TxtO", True),
        ("TOPIC=g", "TxtI", True),
        ("TOPIC=g", "Co", True),
    ],
)
def test_address_type(address: str, value_type: str, accepted: bool) -> None:
    """Each address kind takes its own type: IN_ID Ci, ACK_ID Co, IN_* TxtI; JSON and topic
    addresses every type (on an output type the device reports the output's state)."""
    tag = f'name = "t"\ntype = "{value_type}"\naddress = "{address}"'
    text = station_file(tag, line='payload_type = "json"', address="d/(?P<g>.*)")
    if accepted:
        assert loads(text).stations[0].tags[0].type is ValueType(value_type)
    else:
        (found,) = errors(text)
        assert found.startswith("station[1].tag[1].address: ")
        assert value_type in found


@pytest.mark.parametrize(("topic_type", "value_type"), [("TxtO", "TxtO"), ("TxtO", "Ao")])
def test_out_addresses_need_text_output(topic_type: str, value_type: str) -> None:
    """OUT_TOPIC and OUT_VALUE are TxtO tags, and together they are accepted."""
    text = station_file(
        f'name = "topic"\ntype = "{topic_type}"\naddress = "OUT_TOPIC"\ndefault = "cmd/1"',
        f'name = "value"\ntype = "{value_type}"\naddress = "OUT_VALUE"',
    )
    if value_type == "TxtO":
        station = loads(text).stations[0]
        assert station.tag_by_kind(Kind.OUT_TOPIC) is station.tags[0]
        assert station.tags[0].default == "cmd/1"
    else:
        assert errors(text) == ("station[1].tag[2].address: OUT_VALUE needs type TxtO, found Ao",)


def test_output_with_publish_needs_no_address() -> None:
    """An output tag with a `publish` table and no address is accepted (SPEC §6)."""
    text = station_file(
        'name = "out1"\ntype = "Do"\n'
        'publish = { topic = "dev/{dev}/cmd", payload = \'{{"id":1,"on":{value:int}}}\' }',
        address="dev/(?P<dev>[^/]+)/state",
    )
    tag = loads(text).stations[0].tags[0]
    assert tag.address is None
    assert tag.publish is not None
    assert tag.publish.topic == "dev/{dev}/cmd"


def test_publish_payload_default() -> None:
    """A publish table without a payload sends the plain value."""
    text = station_file('name = "o"\ntype = "Ao"\npublish = { topic = "a/b" }')
    publish = loads(text).stations[0].tags[0].publish
    assert publish is not None
    assert publish.payload == "{value}"


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            'name = "t"\ntype = "Ai"\npublish = { topic = "a/b" }',
            "station[1].tag[1].publish: only output tags publish; Ai is an input type",
        ),
        (
            'name = "t"\ntype = "Di"\naddress = "JA=x"\npublish = { topic = "a/b" }',
            "station[1].tag[1].publish: only output tags publish; Di is an input type",
        ),
        (
            'name = "t"\ntype = "Ao"\npublish = { topic = "a/{foo}" }',
            "station[1].tag[1].publish.topic: unknown placeholder {foo} "
            "(known: station, tag, value)",
        ),
        (
            'name = "t"\ntype = "Ao"\npublish = { topic = "a", payload = "{valu}" }',
            "station[1].tag[1].publish.payload: unknown placeholder {valu}",
        ),
        (
            'name = "t"\ntype = "Ao"\npublish = { topic = "a", payload = "{value:hex}" }',
            "station[1].tag[1].publish.payload: unknown format :hex (known: json, int, raw)",
        ),
        (
            'name = "t"\ntype = "Ao"\npublish = { payload = "{value}" }',
            "station[1].tag[1].publish.topic: required",
        ),
    ],
)
def test_publish_refused(tag: str, message: str) -> None:
    """`publish` is for output tags, with known placeholders and formats only."""
    found = errors(station_file(tag, line='payload_type = "json"'))
    assert any(e.startswith(message) for e in found), found


def test_publish_knows_named_groups() -> None:
    """The station regex's named groups are placeholders of its publish templates."""
    tag = 'name = "t"\ntype = "Co"\npublish = { topic = "n/{device}/{output}/action" }'
    address = "n/(?P<device>[^/]+)/output/(?P<output>\\d+)/state"
    assert loads(station_file(tag, address=address)).stations[0].tags[0].publish is not None


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('invert = true\ntype = "Di"', {"invert": True, "on_change": True}),
        ('type = "Di"', {"on_change": True}),
        ('type = "Di"\non_change = false', {"on_change": False}),
        ('type = "Ai"', {"on_change": False}),
        ('type = "Ai"\nscale = [2, 1]', {"scale": (2.0, 1.0)}),
        ('type = "Ai"\nmin = 0\nmax = 10', {"minimum": 0.0, "maximum": 10.0, "limits": "discard"}),
        ('type = "Ci"\nmax = 10\nlimits = "clamp"', {"maximum": 10.0, "limits": "clamp"}),
        ('type = "Ai"\ndeadband = 0.5', {"deadband": 0.5}),
    ],
)
def test_processing_options(tag: str, expected: dict[str, object]) -> None:
    """Processing options land in the tag's Processing; digital tags are change-only by default."""
    text = station_file(f'name = "t"\naddress = "JA=v"\n{tag}', line='payload_type = "json"')
    processing = loads(text).stations[0].tags[0].processing
    for attribute, value in expected.items():
        assert getattr(processing, attribute) == value


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            'type = "Ai"\ninvert = true',
            "station[1].tag[1].invert: polarity inversion is for digital",
        ),
        (
            'type = "Di"\nscale = [1, 0]',
            "station[1].tag[1].scale: scaling is for analog and integer",
        ),
        ('type = "Ai"\nscale = [1]', "station[1].tag[1].scale: expected [a, b]"),
        ('type = "Ai"\nmin = 5\nmax = 1', "station[1].tag[1].max: max (1) is below min (5)"),
        ('type = "TxtI"\nmin = 5', "station[1].tag[1].min: limits are for analog and integer"),
        (
            'type = "Ai"\ndeadband = -1',
            "station[1].tag[1].deadband: expected a finite number >= 0, found -1",
        ),
        (
            'type = "Ai"\ndeadband = inf',
            "station[1].tag[1].deadband: expected a finite number >= 0, found inf",
        ),
        ('type = "Ai"\nmin = inf', "station[1].tag[1].min: expected a finite number, found inf"),
        ('type = "Ai"\nmax = nan', "station[1].tag[1].max: expected a finite number, found nan"),
        ('type = "Ai"\nscale = [inf, 0]', "station[1].tag[1].scale: expected [a, b] (numbers)"),
        ('type = "Ai"\nscale = [1, nan]', "station[1].tag[1].scale: expected [a, b] (numbers)"),
        ('type = "Ai"\nlimits = "wrap"', "station[1].tag[1].limits: expected one of 'clamp'"),
        ('type = "Ci"\ndefault = "x"', "station[1].tag[1].default: expected "),
    ],
)
def test_processing_refused(tag: str, message: str) -> None:
    """Processing options that do not fit the tag's type or range are refused."""
    text = station_file(f'name = "t"\naddress = "JA=v"\n{tag}', line='payload_type = "json"')
    found = errors(text)
    assert any(e.startswith(message) for e in found), found


# --- the example files ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example configuration loads without error (given the secrets they name)."""
    monkeypatch.setenv("TTS_API_KEY", "NNSXS.EXAMPLE")
    cfg = load(path)
    assert cfg.lines
    assert cfg.stations
    assert cfg.source == str(path)


def test_netio_example_shape() -> None:
    """The NETIO 4All profile has every measured value, four outputs and their commands."""
    cfg = load(EXAMPLES / "netio-4all.toml")
    (line,) = cfg.lines
    assert (line.payload_type, line.time_field, line.publish_qos) == ("json", ("Agent", "Time"), 1)
    (station,) = cfg.stations
    assert station.will_topic == "devices/netio-4All-25E0/status"
    assert station.will_payload == b"offline"
    writable = [t.name for t in station.tags if t.publish is not None]
    assert writable == [
        *(f"out{n}{suffix}" for n in range(1, 5) for suffix in ("", "_action", "_restart")),
        "get_description",
    ]


def test_examples_are_distinct_installations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example files name their own client ids, distinct from each other."""
    monkeypatch.setenv("TTS_API_KEY", "NNSXS.EXAMPLE")
    ids = {load(path).lines[0].client_id for path in EXAMPLES.glob("*.toml")}
    assert len(ids) == len(list(EXAMPLES.glob("*.toml")))


def test_load_unreadable(tmp_path: Path) -> None:
    """A missing or undecodable file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load(bad)


# --- many identical devices: shared tag records ------------------------------------------------

DEVICE_TAGS = """
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=GlobalMeasure.Voltage"
unit = "V"

[[station.tag]]
name = "since"
type = "TiA"
address = "JA=Agent.Time"
default = "2024-01-01 00:00:00.000"
"""


def test_identical_tags_give_equal_records_per_line() -> None:
    """Stations with the same tag tables get equal tags; a line's zone still shapes its own."""
    text = textwrap.dedent("""
        [[line]]
        name = "utc"
        host = "a"
        payload_type = "json"
        time_zone = "UTC"

        [[line]]
        name = "plus2"
        host = "b"
        payload_type = "json"
        time_zone = "+02:00"
    """)
    for i, line in enumerate(("utc", "utc", "plus2", "plus2")):
        text += f'\n[[station]]\nname = "s{i}"\nline = "{line}"\naddress = "d/{i}"\n' + DEVICE_TAGS
    cfg = loads(text)
    tags = [s.tags for s in cfg.stations]
    assert tags[0] == tags[1]
    assert tags[2] == tags[3]
    assert tags[0][0] == tags[2][0]
    # The same default text read in two zones: two instants.
    assert tags[0][1].default != tags[2][1].default
    assert tags[0][1].default - tags[2][1].default == timedelta(hours=2)


def test_identical_tags_with_errors_reported_for_every_station() -> None:
    """A mistake repeated in many stations is reported at each place, not once."""
    tag = 'name = "t"\ntype = "Ai"\naddress = "JA=a[0]"'
    text = LINE + 'payload_type = "json"\n'
    for i in range(3):
        text += f'\n[[station]]\nname = "s{i}"\naddress = "d/{i}"\n[[station.tag]]\n{tag}\n'
    found = errors(text)
    assert [e.split(":")[0] for e in found] == [f"station[{i}].tag[1].address" for i in (1, 2, 3)]


def test_identical_topic_tags_checked_against_each_station_regex() -> None:
    """TOPIC= depends on the station's regular expression: read again for each station."""
    tag = '[[station.tag]]\nname = "t"\ntype = "TxtI"\naddress = "TOPIC=dev"\n'
    text = LINE + (
        f'\n[[station]]\nname = "a"\naddress = "x/(?P<dev>[^/]+)"\n{tag}'
        f'\n[[station]]\nname = "b"\naddress = "y/(?P<other>[^/]+)"\n{tag}'
    )
    assert errors(text) == (
        "station[2].tag[1].address: the station address has no group named 'dev'",
    )


def test_collector_paused_while_loading() -> None:
    """Loading pauses the garbage collector and gives it back as it was, errors or not."""
    assert gc.isenabled()
    seen: list[bool] = []
    with collector_paused():
        seen.append(gc.isenabled())
    assert seen == [False]
    assert gc.isenabled()
    with pytest.raises(ConfigError):
        loads("not toml = = =")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        loads(LINE)
        assert not gc.isenabled()  # a host that turned it off keeps it off
    finally:
        gc.enable()


def test_repeated_tables_with_station_level_errors_are_reported_for_every_station() -> None:
    """A table whose tags clash with each other (two of one name, two ACK_IDs) is reported at
    each station that repeats it, not only at the first."""
    clash = (
        '[[station.tag]]\nname = "t"\ntype = "Ai"\naddress = "JA=a"\n'
        '[[station.tag]]\nname = "t"\ntype = "Ai"\naddress = "JA=b"\n'
        '[[station.tag]]\nname = "k1"\ntype = "Co"\naddress = "ACK_ID"\n'
        '[[station.tag]]\nname = "k2"\ntype = "Co"\naddress = "ACK_ID"\n'
    )
    text = LINE + 'payload_type = "json"\n'
    for i in range(3):
        text += f'\n[[station]]\nname = "s{i}"\naddress = "d/{i}"\n{clash}'
    found = errors(text)
    assert [e.split(":")[0] for e in found] == [
        place for i in (1, 2, 3) for place in (f"station[{i}].tag[2].name", f"station[{i}].tag")
    ]


def test_a_repeated_table_is_read_again_under_another_payload_type() -> None:
    """The same table on a station with its own payload type is checked for that type."""
    tag = '[[station.tag]]\nname = "v"\ntype = "Ai"\naddress = "JA=a"\n'
    text = LINE + 'payload_type = "json"\n'
    text += f'\n[[station]]\nname = "a"\naddress = "d/a"\n{tag}'
    text += f'\n[[station]]\nname = "b"\naddress = "d/b"\npayload_type = "text"\n{tag}'
    text += f'\n[[station]]\nname = "c"\naddress = "d/c"\n{tag}'
    found = errors(text)
    assert [e.split(":")[0] for e in found] == ["station[2].tag[1].address"]


def test_exact_addresses_are_not_compiled_as_regular_expressions() -> None:
    """An address without regex meta characters matches itself only: no pattern is kept."""
    cfg = loads(
        LINE
        + '\n[[station]]\nname = "a"\naddress = "plant/area07/dev00042/state"\n'
        + '\n[[station]]\nname = "b"\naddress = "plant/area(\\\\d+)/dev00043/.*"\n'
        + '\n[[station]]\nname = "c"\naddress = "plant/dev.42"\n'
    )
    assert [s.regex is not None for s in cfg.stations] == [False, True, True]
