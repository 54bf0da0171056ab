"""The command line: upstream's flags, and one clear line + exit 2 for every bad input.

Run as real subprocesses (``python -m mbclient``), because what matters is what a user or
runit sees: the exit status and stderr, never a traceback.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "mbclient", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("mbclient: ")
    for w in words:
        assert w in lines[0], lines[0]
    assert proc.stdout == ""


def test_help_lists_upstream_flags() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("-s", "--serial", "-r", "--rate", "-m", "--mode", "-F", "--force-devices", "-x", "--exit",
                 "-d", "--debug", "--models", "-P", "--probe", "--dbus", "--settings", "--max-rss",
                 "--metrics-port"):
        assert flag in proc.stdout


def test_missing_serial_port(tmp_path: pathlib.Path) -> None:
    assert_usage_error(run_cli("-s", str(tmp_path / "ttyUSB9")), "serial port", "ttyUSB9", "does not exist")


def test_serial_option_without_value() -> None:
    assert_usage_error(run_cli("-s"), "-s/--serial")


def test_missing_port_in_forced_spec(tmp_path: pathlib.Path) -> None:
    assert_usage_error(run_cli("-F", f"rtu:{tmp_path}/ttyUSB7:9600:1"), "ttyUSB7", "does not exist")


@pytest.mark.parametrize("spec, words", [
    ("rtu:ttyUSB0", ["bad device spec", "rtu:ttyUSB0"]),
    ("modbus:ttyUSB0:9600:1", ["unknown method"]),
    ("tcp:192.168.1.5:502:x", ["unit 'x'"]),
    ("tcp:192.168.1.5:70000:1", ["port 70000"]),
    ("rtu:ttyUSB0:9600:300", ["unit 300"]),
])
def test_malformed_spec(spec: str, words: list[str]) -> None:
    assert_usage_error(run_cli("-F", spec), *words)


def test_malformed_spec_in_comma_list() -> None:
    assert_usage_error(run_cli("-F", "tcp:127.0.0.1:502:1,tcp:127.0.0.1:502"), "bad device spec")


def test_malformed_probe_spec() -> None:
    assert_usage_error(run_cli("-P", "tcp:127.0.0.1"), "bad device spec")


def test_unknown_model() -> None:
    assert_usage_error(run_cli("-F", "tcp:127.0.0.1:502:1:nosuchmeter"), "unknown model", "nosuchmeter")


def test_unknown_model_in_probe() -> None:
    assert_usage_error(run_cli("-P", "tcp:127.0.0.1:502:1:nosuchmeter"), "unknown model")


@pytest.mark.parametrize("args, words", [
    (["-r", "1234"], ["bad baud rate 1234"]),
    (["-r", "fast"], ["-r/--rate", "'fast'"]),
    (["-F", "rtu:ttyUSB0:1234:1"], ["baud rate 1234 not supported"]),
])
def test_bad_baud(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli(*args), *words)


@pytest.mark.parametrize("args, words", [
    (["-m", "binary"], ["-m/--mode", "binary"]),
    (["--max-rss", "lots"], ["--max-rss"]),
    (["--metrics-port", "99999"], ["metrics port 99999"]),
    (["--settings", "/nonexistent-dir-for-mbclient/settings.xml"], ["settings file directory"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--control-poll", "0"], ["--control-poll", "must be positive"]),
])
def test_other_bad_options(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli(*args), *words)


def test_models_table_lists_the_registry() -> None:
    from mbclient.devices import all_models

    proc = run_cli("--models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["Model", "Manufacturer"]
    for model in all_models():
        assert any(line.split()[0] == model.name for line in lines[2:]), model.name


def test_control_poll_reaches_the_runtime() -> None:
    from mbclient.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args([])).control_poll == 0.1
    assert config_from_args(build_parser().parse_args(["--control-poll", "0.2"])).control_poll == 0.2
