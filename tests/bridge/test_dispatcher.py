"""The dispatcher list and Kamailio command line built from the bridge's config, without Kamailio."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.__main__ import main
from bridge.config import parse_config
from bridge.dispatcher import Host, destinations, dispatcher_list, kamailio_args, parse_host
from bridge.errors import ConfigError

CFG = Path(__file__).resolve().parents[2] / "bridge" / "assets" / "kamailio.cfg"


def config(**sip: object) -> object:
    return parse_config({"sip": {"first_port": 5080, "workers": 3, **sip}})


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_one_line_per_worker_with_its_load_limit() -> None:
    text = dispatcher_list(config(calls_per_worker=3))
    assert lines(text) == [
        "1 sip:127.0.0.1:5080 0 0 duid=127.0.0.1:5080;maxload=3",
        "1 sip:127.0.0.1:5081 0 0 duid=127.0.0.1:5081;maxload=3",
        "1 sip:127.0.0.1:5082 0 0 duid=127.0.0.1:5082;maxload=3",
    ]
    assert "3 workers, 9 calls at most" in text


def test_workers_on_other_hosts_share_the_layout_unless_told() -> None:
    cfg = config()
    hosts = [
        parse_host("10.0.0.2", cfg),
        parse_host("10.0.0.3:6000:2", cfg),
        parse_host("[2001:db8::5]::1", cfg),
    ]
    assert hosts == [Host("10.0.0.2", 5080, 3), Host("10.0.0.3", 6000, 2), Host("2001:db8::5", 5080, 1)]
    uris = [d.uri for d in destinations(cfg, hosts)]
    assert uris[3:] == [
        "sip:10.0.0.2:5080",
        "sip:10.0.0.2:5081",
        "sip:10.0.0.2:5082",
        "sip:10.0.0.3:6000",
        "sip:10.0.0.3:6001",
        "sip:[2001:db8::5]:5080",
    ]
    duids = [d.duid for d in destinations(cfg, hosts)]
    assert len(set(duids)) == len(duids)


@pytest.mark.parametrize("spec", ["", ":5080", "h:x", "h:1:y", "h:65535:2", "h:1:2:3", "[::1"])
def test_bad_extra_hosts_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="--host-extra"):
        parse_host(spec, config())


def test_a_wildcard_bind_needs_an_address_and_duplicates_are_refused() -> None:
    cfg = config(host="0.0.0.0")
    with pytest.raises(ConfigError, match="--address"):
        dispatcher_list(cfg)
    assert lines(dispatcher_list(cfg, address="192.0.2.7"))[0].startswith("1 sip:192.0.2.7:5080 ")
    with pytest.raises(ConfigError, match="listed twice"):
        dispatcher_list(config(), [Host("127.0.0.1", 5082, 1)])


def test_tcp_destinations_only_when_the_workers_listen_on_tcp() -> None:
    assert (
        lines(dispatcher_list(config(), transport="tcp"))[0].split()[1] == "sip:127.0.0.1:5080;transport=tcp"
    )
    with pytest.raises(ConfigError, match=r"sip\.transports"):
        dispatcher_list(config(transports=["udp"]), transport="tcp")


def test_kamailio_args_are_defines_the_cfg_reads() -> None:
    argv = kamailio_args(
        "k.cfg",
        "/x/ds.list",
        "udp:127.0.0.1:5060",
        runtime_dir="/run/k",
        ctl_socket="/run/k/ctl",
        retry_after=7,
    )
    assert argv[:3] == ["kamailio", "-f", "k.cfg"] and "-DD" in argv and "-E" in argv
    defines = [argv[i + 1] for i, a in enumerate(argv) if a == "-A"]
    assert defines == [
        "LISTEN=udp:127.0.0.1:5060",
        'DS_LIST="/x/ds.list"',
        'CTL_SOCKET="unix:/run/k/ctl"',
        "RETRY_AFTER=7",
    ]
    cfg_text = CFG.read_text()
    for define in defines:
        assert f"#!ifndef {define.split('=')[0]}" in cfg_text


def test_cli_prints_the_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sip:\n  first_port: 7000\n  workers: 2\n")
    assert main(["dispatcher-list", "--config", str(path), "--host-extra", "10.1.1.1:7000:1"]) == 2
    assert "127.0.0.1 is a loopback address" in capsys.readouterr().err  # the sample's sip.host
    cmd = [
        "dispatcher-list",
        "--config",
        str(path),
        "--address",
        "10.1.1.2",
        "--host-extra",
        "10.1.1.1:7000:1",
    ]
    assert main(cmd) == 0
    assert lines(capsys.readouterr().out) == [
        "1 sip:10.1.1.2:7000 0 0 duid=10.1.1.2:7000;maxload=4",
        "1 sip:10.1.1.2:7001 0 0 duid=10.1.1.2:7001;maxload=4",
        "1 sip:10.1.1.1:7000 0 0 duid=10.1.1.1:7000;maxload=4",
    ]
    assert main(["dispatcher-list", "--config", str(path), "--host-extra", "nope:x"]) == 2


def test_the_header_names_every_host_and_its_ports() -> None:
    cfg = config(host="10.231.0.11", workers=4)
    text = dispatcher_list(cfg, [parse_host("10.231.0.12", cfg), parse_host("[2001:db8::5]:6000:1", cfg)])
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[1:5] == [
        "# 9 workers, 36 calls at most, on 3 hosts:",
        "#   10.231.0.11: 4 workers, SIP ports 5080-5083 (this config)",
        "#   10.231.0.12: 4 workers, SIP ports 5080-5083",
        "#   [2001:db8::5]: 1 worker, SIP port 6000",
    ]
    assert len(lines(text)) == 9
    assert "on 1 host:" in dispatcher_list(config())  # one host on 127.0.0.1 is fine


@pytest.mark.parametrize(
    "local, extra",
    [("127.0.0.1", "10.0.0.2"), ("10.0.0.1", "127.0.0.5"), ("10.0.0.1", "localhost"), ("10.0.0.1", "[::1]")],
)
def test_several_hosts_may_not_list_a_loopback_address(local: str, extra: str) -> None:
    cfg = config(host=local)
    with pytest.raises(ConfigError, match="loopback address"):
        dispatcher_list(cfg, [parse_host(extra, cfg)])


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_kamailio_accepts_the_cfg_with_a_generated_list(tmp_path: Path) -> None:
    (tmp_path / "ds.list").write_text(dispatcher_list(config()))
    argv = kamailio_args(
        str(CFG), str(tmp_path / "ds.list"), "udp:127.0.0.1:5999", runtime_dir=str(tmp_path),
        ctl_socket=str(tmp_path / "ctl"),
    )  # fmt: skip
    result = subprocess.run([*argv, "-c"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "config file ok" in result.stderr + result.stdout
