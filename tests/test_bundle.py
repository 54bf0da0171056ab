"""The Venus OS bundle: built once, unpacked into a temporary root, installed, run.

What a GX owner relies on: install.sh puts everything under /data/<name>, links the
service, adds (and uninstall.sh removes) exactly its own lines in /data/rc.local, claims
only its own serial port from serial-starter, and the service's ``run`` script starts
mbclient with nothing but the bundle and the interpreter's standard library.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from mbclient import __version__

ROOT = Path(__file__).resolve().parent.parent
TOP = f"mbclient-venus-{__version__}"

pytestmark = pytest.mark.timeout(240)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-venus-bundle, once per session."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-venus-bundle"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pure Python" in r.stdout  # the builder's own import check ran
    path = out / f"{TOP}.tar.gz"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter with the standard library only: a venv without pip or packages."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    for dep in ("anyio", "dbus_fast", "serial", "serial_asyncio_fast", "mbclient"):
        r = subprocess.run([str(py), "-c", f"import {dep}"], capture_output=True, cwd=venv)
        assert r.returncode != 0, f"{dep} is importable without the bundle"
    return str(py)


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    return dest / TOP


def fake_serial_starter(root: Path) -> Path:
    """Stand-ins for Venus OS's stop-tty.sh/start-tty.sh that record their calls."""
    ss = root / "opt" / "victronenergy" / "serial-starter"
    ss.mkdir(parents=True)
    calls = root / "serial-starter.calls"
    for name in ("stop-tty.sh", "start-tty.sh"):
        script = ss / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        script.chmod(0o755)
    return calls


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r


def read_conf(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v.strip("\"'")
    return out


USER_RC = "#!/bin/bash\n# my own boot tweaks\necho tweak > /tmp/tweak\n\nexit 0\n"


# -- what is in the tarball ------------------------------------------------------------------------


def test_bundle_is_pure_python_and_complete(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers()}
        vendored = tar.extractfile(f"{TOP}/lib/VENDORED.txt").read().decode()
    names = set(members)
    for needed in ("install.sh", "uninstall.sh", "boot.sh", "service/run", "service/log/run",
                   "mbclient.conf.example", "lib/mbclient/__main__.py", "lib/dbus_fast/message.py",
                   "lib/serial_asyncio_fast/__init__.py", "lib/anyio/__init__.py", "lib/zeroconf/_dns.py",
                   "lib/ifaddr/__init__.py"):
        assert f"{TOP}/{needed}" in names, needed
    for script in ("install.sh", "uninstall.sh", "boot.sh", "service/run", "service/log/run"):
        assert members[f"{TOP}/{script}"].mode & stat.S_IXUSR, script
    compiled = [n for n in names if n.endswith((".so", ".pyc", ".pyd", ".c", ".pxd"))]
    assert compiled == []
    for dist in ("dbus-fast==", "anyio==", "pyserial==", "pyserial-asyncio-fast==", "zeroconf==", "ifaddr=="):
        assert dist in vendored
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


# -- install / upgrade / uninstall -----------------------------------------------------------------


def test_install_upgrade_uninstall_in_a_temporary_root(bundle: Path, tmp_path: Path) -> None:
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    rc = root / "data" / "rc.local"
    rc.write_text(USER_RC)
    rc.chmod(0o755)
    calls = fake_serial_starter(root)
    app = root / "data" / "mbclient"

    out = sh(src / "install.sh", "--root", root, "--tty", "/dev/ttyUSB1", "--baud", "19200",
             "--devices", "1:growatt_min 2:sdm230").stdout
    assert "stop-tty" in out and "serial-starter" in out  # it explains both ways

    # files and service
    for f in ("lib/mbclient/__init__.py", "service/run", "service/log/run", "boot.sh", "uninstall.sh"):
        assert (app / f).exists(), f
    assert os.readlink(root / "service" / "mbclient") == str(app / "service")
    assert not (app / "service" / "down").exists()
    assert "exec multilog t s25000 n4 /var/log/mbclient" in (app / "service" / "log" / "run").read_text()
    conf = read_conf(app / "mbclient.conf")
    assert (conf["TTY"], conf["BAUD"], conf["DEVICES"], conf["PORT_OWNER"]) == (
        "ttyUSB1", "19200", "1:growatt_min 2:sdm230", "stop-tty")
    # only that one port was taken from serial-starter
    assert calls.read_text().splitlines() == ["stop-tty.sh ttyUSB1"]

    # rc.local: the user's lines untouched, our block before their final exit
    text = rc.read_text()
    assert text.startswith("#!/bin/bash\n# my own boot tweaks\necho tweak > /tmp/tweak\n")
    assert text.endswith("# <<< mbclient <<<\nexit 0\n")
    assert "[ -x /data/mbclient/boot.sh ] && /data/mbclient/boot.sh" in text
    assert os.stat(rc).st_mode & 0o777 == 0o755

    # upgrade: the user's edit survives, only keys given as options change, rc.local unchanged
    conf_path = app / "mbclient.conf"
    conf_path.write_text(conf_path.read_text().replace("DEBUG=0", "DEBUG=1"))
    (app / "service" / "supervise").mkdir()  # what daemontools keeps there must survive
    sh(src / "install.sh", "--root", root, "--metrics-port", "9480", "--no-start")
    conf = read_conf(conf_path)
    assert (conf["DEBUG"], conf["METRICS_PORT"], conf["TTY"]) == ("1", "9480", "ttyUSB1")
    assert rc.read_text() == text
    assert (app / "service" / "supervise").is_dir()
    assert (app / "service" / "down").exists()  # --no-start
    sh(src / "install.sh", "--root", root)
    assert not (app / "service" / "down").exists()

    # boot after a firmware update: /service is empty again, rc.local brings it back
    (root / "service" / "mbclient").unlink()
    sh(app / "boot.sh")
    assert os.readlink(root / "service" / "mbclient") == str(app / "service")
    sh(app / "boot.sh")  # idempotent

    # uninstall: link and rc.local lines gone, port given back, configuration kept
    sh(app / "uninstall.sh")
    assert not os.path.lexists(root / "service" / "mbclient")
    assert rc.read_text() == USER_RC
    assert calls.read_text().splitlines()[-1] == "start-tty.sh ttyUSB1"
    assert conf_path.exists() and not (app / "lib").exists() and not (app / "service").exists()

    # a fresh install over the kept configuration, then a purge
    sh(src / "install.sh", "--root", root)
    assert read_conf(conf_path)["DEBUG"] == "1"
    sh(app / "uninstall.sh", "--purge")
    assert not app.exists() and rc.read_text() == USER_RC


def test_install_creates_rc_local_and_refuses_bad_input(bundle: Path, tmp_path: Path) -> None:
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    root.mkdir()
    sh(src / "install.sh", "--root", root, "--name", "meters")
    rc = root / "data" / "rc.local"
    assert rc.read_text().startswith("#!/bin/sh\n") and "/data/meters/boot.sh" in rc.read_text()
    assert os.access(rc, os.X_OK)
    assert "/var/log/meters" in (root / "data" / "meters" / "service" / "log" / "run").read_text()
    for bad in (["--name", "a b"], ["--devices", "1:x; rm -rf /"], ["--port-owner", "none"], ["--bogus"],
                ["--tty", "ttyUSB0; touch X"], ["--baud", "9601"], ["--metrics-port", "70000"]):
        r = subprocess.run([str(src / "install.sh"), "--root", str(root), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("install.sh: ") and len(r.stderr.splitlines()) == 1, bad


def test_serial_starter_mode(bundle: Path, tmp_path: Path) -> None:
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    fake_serial_starter(root)
    match = 'ENV{ID_PATH}=="platform-1c1c400.usb-usb-0:1:1.0"'
    sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", "--port-owner", "serial-starter",
       "--adapter-match", match)
    app = root / "data" / "mbclient"
    # serial-starter starts us, so no /service link of our own (two instances would fight)
    assert not os.path.lexists(root / "service" / "mbclient")
    tpl = root / "opt" / "victronenergy" / "service-templates" / "mbclient"
    run = (tpl / "run").read_text()
    assert "MBCLIENT_PORT=TTY" in run and f"exec {app}/service/run" in run
    assert run.count("TTY") == 1  # serial-starter replaces the placeholder; nothing else may match
    assert "/var/log/mbclient.TTY" in (tpl / "log" / "run").read_text()
    assert (root / "data" / "conf" / "serial-starter.d" / "mbclient.conf").read_text() == "service mbclient mbclient\n"
    rule = (root / "etc" / "udev" / "rules.d" / "zz-mbclient.rules").read_text()
    assert rule == f'ACTION=="add", SUBSYSTEM=="tty", {match}, ENV{{VE_SERVICE}}="mbclient"\n'

    sh(app / "uninstall.sh")
    assert not tpl.exists()
    assert not (root / "etc" / "udev" / "rules.d" / "zz-mbclient.rules").exists()
    assert not (root / "data" / "conf" / "serial-starter.d" / "mbclient.conf").exists()


def fake_svc(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A stand-in for daemontools' svc on PATH that records its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "svc.calls"
    calls.touch()
    svc = bindir / "svc"
    svc.write_text(f'#!/bin/sh\necho "svc $*" >> "{calls}"\n')
    svc.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, calls


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path below root with its mode and content (or link target)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(root))] = (st.st_mode, os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes())
        else:
            out[str(p.relative_to(root))] = (st.st_mode, "")
    return out


def test_a_failed_install_changes_nothing(bundle: Path, tmp_path: Path) -> None:
    """Bad options or a bad resulting configuration: one line, exit 2, and the previous
    installation untouched and still running (the service is never stopped)."""
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    calls = fake_serial_starter(root)
    env, svc_calls = fake_svc(tmp_path)
    sh(src / "install.sh", "--root", root, "--tty", "ttyUSB1", "--devices", "1:growatt_min 2:sdm230", env=env)
    app = root / "data" / "mbclient"
    svc_before, ss_before = svc_calls.read_text(), calls.read_text()
    before = snapshot(root)
    work = tmp_path / "cwd"
    work.mkdir()
    for bad in (
        ["--port-owner", "serial-starter"],  # no --adapter-match and no udev here
        ["--tty", "ttyUSB0; touch X"],
        ["--tty", "$(touch X)"],
        ["--baud", "9601"],
        ["--scan-rates", "9600 38401"],
        ["--scan-rates", "9600;touch X"],
        ["--devices", "0:sdm230"],  # unit 0 is broadcast
        ["--devices", "1:sdm230 `touch X`"],
        ["--tty", "", "--devices", "1:sdm230"],  # a unit on no port
        ["--adapter-match", "ENV{ID_PATH}=='x'"],
        ["--metrics-port", "0"],
        ["--stock-network", "maybe"],
        ["--root", str(tmp_path / "nowhere")],
    ):
        r = subprocess.run([str(src / "install.sh"), "--root", str(root), *bad], capture_output=True,
                           text=True, cwd=work, env=dict(os.environ, **env))
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert r.stderr.startswith("install.sh: ") and len(r.stderr.splitlines()) == 1, (bad, r.stderr)
        assert snapshot(root) == before, bad
        assert svc_calls.read_text() == svc_before and calls.read_text() == ss_before, bad
        assert not (work / "X").exists() and list(work.iterdir()) == [], bad
    # A configuration the user broke by hand is refused too, before anything changes.
    conf = app / "mbclient.conf"
    conf.write_text(conf.read_text().replace("BAUD=9600", "BAUD='9600; touch X'"))
    before = snapshot(root)
    r = subprocess.run([str(src / "install.sh"), "--root", str(root)], capture_output=True, text=True, cwd=work)
    assert r.returncode == 2 and "bad BAUD" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert snapshot(root) == before


def test_a_late_failure_starts_the_stopped_service_again(bundle: Path, tmp_path: Path) -> None:
    """Past the checks, the running service is stopped for the swap; if a step after that
    fails (a full disk, here a directory where a file must go), it is started again."""
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    env, svc_calls = fake_svc(tmp_path)
    sh(src / "install.sh", "--root", root, "--devices", "tcp:127.0.0.1:1502:1:sdm230", env=env)
    app = root / "data" / "mbclient"
    (app / "service" / "run.new").mkdir()  # install_file cannot write there
    n = len(svc_calls.read_text().splitlines())
    r = subprocess.run([str(src / "install.sh"), "--root", str(root)], capture_output=True, text=True,
                       env=dict(os.environ, **env))
    assert r.returncode != 0
    assert "started again" in r.stderr, r.stderr
    link = root / "service" / "mbclient"
    assert svc_calls.read_text().splitlines()[n:] == [f"svc -d {link}", f"svc -u {link}"]
    assert not (app / "lib.new").exists()  # no staging left behind


def test_configuration_is_written_shell_safe(bundle: Path, tmp_path: Path) -> None:
    """Values are written quoted: sourcing mbclient.conf (as root, at every boot) gives
    back exactly what was given and runs nothing."""
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    fake_serial_starter(root)
    match = 'ENV{ID_PATH}=="platform-1c1c400.usb-usb-0:1:1.0"; ATTRS{serial}=="A B|C&D>E"'
    sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", "--devices", "1:growatt_min 2:sdm230,tcp:10.0.0.5:502:3",
       "--port-owner", "serial-starter", "--adapter-match", match)
    conf = root / "data" / "mbclient" / "mbclient.conf"
    r = subprocess.run(["sh", "-c", '. "$1"; printf "%s\n" "$TTY" "$DEVICES" "$ADAPTER_MATCH"', "sh", str(conf)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == ["ttyUSB0", "1:growatt_min 2:sdm230,tcp:10.0.0.5:502:3", match]
    rule = (root / "etc" / "udev" / "rules.d" / "zz-mbclient.rules").read_text()
    assert rule == f'ACTION=="add", SUBSYSTEM=="tty", {match}, ENV{{VE_SERVICE}}="mbclient"\n'


def test_network_only_install_takes_no_port_and_hands_over_the_stock_client(bundle: Path, tmp_path: Path) -> None:
    """No --tty: no port taken from serial-starter, no -s; the stock client's network
    service is stopped at every boot (it would publish the same devices) and given back
    by the uninstaller. With a serial port (auto) the stock network service is left alone."""
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    ss_calls = fake_serial_starter(root)
    env, svc_calls = fake_svc(tmp_path)
    stock = root / "service" / "dbus-modbus-client"
    stock.mkdir(parents=True)
    (stock / "run").write_text("#!/bin/sh\nexec dbus-modbus-client.py\n")

    out = sh(src / "install.sh", "--root", root, "--devices", "tcp:127.0.0.1:1502:1:sdm230", env=env).stdout
    app = root / "data" / "mbclient"
    assert read_conf(app / "mbclient.conf")["TTY"] == ""
    assert not ss_calls.exists() or ss_calls.read_text() == ""  # no port taken
    assert "No serial port" in out
    assert (stock / "down").exists()
    # stopped before our service is linked (and could start): never both at once
    assert out.index("stopped the stock dbus-modbus-client") < out.index("linked ")
    assert f"svc -d {stock}" in svc_calls.read_text().splitlines()
    args = run_args(app, tmp_path)
    assert "-s" not in args and args[:4] == ["-m", "mbclient", "-F", "tcp:127.0.0.1:1502:1:sdm230"], args

    # after a reboot /service is fresh: boot.sh stops the stock network service again
    (stock / "down").unlink()
    sh(app / "boot.sh", env=env)
    assert (stock / "down").exists()
    n = len(svc_calls.read_text().splitlines())
    sh(app / "boot.sh", env=env)  # idempotent
    assert len(svc_calls.read_text().splitlines()) == n

    # a serial port added later: auto gives the network back to the stock client
    sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", env=env)
    assert not (stock / "down").exists() and f"svc -u {stock}" in svc_calls.read_text().splitlines()
    sh(src / "install.sh", "--root", root, "--stock-network", "stop", env=env)
    assert (stock / "down").exists()

    sh(app / "uninstall.sh", env=env)
    assert not (stock / "down").exists()
    assert svc_calls.read_text().splitlines()[-1] != f"svc -d {stock}"
    assert f"svc -u {stock}" in svc_calls.read_text().splitlines()[n:]
    assert ss_calls.read_text().splitlines()[-1] == "start-tty.sh ttyUSB0"


def test_serial_starter_mode_takes_effect_without_a_reboot(bundle: Path, tmp_path: Path) -> None:
    """serial-starter reads its rules once at start: the installer restarts it when they
    change (not when they do not), and says to reboot when it cannot."""
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    ss_calls = fake_serial_starter(root)
    env, svc_calls = fake_svc(tmp_path)
    starter = root / "service" / "serial-starter"
    starter.mkdir(parents=True)
    match = 'ENV{ID_PATH}=="platform-1c1c400.usb-usb-0:1:1.0"'
    out = sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", "--port-owner", "serial-starter",
             "--adapter-match", match, env=env).stdout
    assert f"svc -t {starter}" in svc_calls.read_text().splitlines()
    assert "restarted serial-starter" in out
    assert ss_calls.read_text().splitlines()[-1] == "start-tty.sh ttyUSB0"  # looked at afresh
    app = root / "data" / "mbclient"
    n = len(svc_calls.read_text().splitlines())
    sh(app / "boot.sh", env=env)  # a normal boot: rules unchanged, serial-starter left alone
    assert len(svc_calls.read_text().splitlines()) == n

    # back to stop-tty: our serial-starter files go, serial-starter re-reads its rules
    sh(src / "install.sh", "--root", root, "--port-owner", "stop-tty", env=env)
    assert not (root / "data" / "conf" / "serial-starter.d" / "mbclient.conf").exists()
    assert svc_calls.read_text().splitlines().count(f"svc -t {starter}") == 2
    assert os.readlink(root / "service" / "mbclient") == str(app / "service")
    sh(app / "uninstall.sh", env=env)

    # no way to restart it: the installer says a reboot is needed
    starter.rmdir()
    out = sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", "--port-owner", "serial-starter",
             "--adapter-match", match, env=env).stdout
    assert "reboot the GX" in out


# -- the run script ----------------------------------------------------------------------------------


def run_args(app: Path, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """What service/run exec's, captured by a stand-in interpreter."""
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\necho "PYTHONPATH=$PYTHONPATH"\n')
    fake.chmod(0o755)
    conf = app / "mbclient.conf"
    conf.write_text(conf.read_text().replace("PYTHON=python3", f"PYTHON={fake}"))
    r = sh(app / "service" / "run", env=env)
    return r.stdout.splitlines()


def test_run_script_turns_the_configuration_into_flags(bundle: Path, tmp_path: Path) -> None:
    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    root.mkdir()
    sh(src / "install.sh", "--root", root, "--tty", "ttyUSB0", "--devices", "1:growatt_min,2 tcp:10.0.0.5:502:3",
       "--metrics-port", "9480", "--no-start")
    app = root / "data" / "mbclient"
    args = run_args(app, tmp_path)
    # BAUD is the listed units' rate; a scan of the port tries every model's rate, as the stock
    # client's does (no -r), unless SCAN_RATES names some
    assert args == [
        "-m", "mbclient", "-s", "/dev/ttyUSB0", "-m", "rtu",
        "-F", "rtu:ttyUSB0:9600:1:growatt_min,rtu:ttyUSB0:9600:2,tcp:10.0.0.5:502:3",
        "--metrics-port", "9480", "--gx", f"PYTHONPATH={app}/lib",
    ]
    sh(src / "install.sh", "--root", root, "--scan-rates", "38400,9600", "--no-start")
    args = run_args(app, tmp_path)
    assert args[:10] == ["-m", "mbclient", "-s", "/dev/ttyUSB0", "-m", "rtu", "-r", "38400", "-r", "9600"]
    # serial-starter mode: the template passes the port it was started for
    args = run_args(app, tmp_path, env={"MBCLIENT_PORT": "ttyUSB3"})
    assert "/dev/ttyUSB3" in args and "rtu:ttyUSB3:9600:1:growatt_min,rtu:ttyUSB3:9600:2,tcp:10.0.0.5:502:3" in args


async def _run_service(app: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(app / "service" / "run"), *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def configure(app: Path, **values: str) -> None:
    conf = app / "mbclient.conf"
    text = conf.read_text()
    lines = [ln for ln in text.splitlines() if ln.split("=", 1)[0] not in values]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    conf.write_text("\n".join(lines) + "\n")


@pytest.mark.asyncio
async def test_run_script_with_a_bare_interpreter_against_the_simulator(
    bundle: Path, bare_python: str, tmp_path: Path, rtu_port, running_site
) -> None:
    """The installed service, with nothing but the stdlib: lists models, probes the
    simulated meter, publishes both devices on a private bus and stops cleanly on SIGTERM."""
    from mbclient.demo import private_bus
    from mbclient.liveview import BusMirror

    src = unpack(bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    root.mkdir()
    await asyncio.to_thread(sh, src / "install.sh", "--root", root, "--no-start", env={"PYTHON": bare_python})
    app = root / "data" / "mbclient"
    assert any((app / "lib" / "mbclient").glob("__pycache__/*.pyc"))  # compiled for that interpreter

    configure(app, PYTHON=bare_python, TTY="", DEVICES="", EXTRA_ARGS="--models")
    code, out = await _run_service(app)
    assert code == 0 and "growatt_min" in out and "sdm230" in out, out

    configure(app, EXTRA_ARGS=f"-P rtu:{rtu_port.path}:9600:2")
    code, out = await _run_service(app)
    assert code == 0, out
    assert "SDM230" in out or "sdm230" in out, out

    async with private_bus(tmp_path) as address:
        configure(
            app, EXTRA_ARGS="--grace 3",
            DEVICES=f"rtu:{rtu_port.path}:9600:1:growatt_min rtu:{rtu_port.path}:9600:2:sdm230",
            SETTINGS=str(tmp_path / "settings.xml"), DBUS_ADDRESS=address,
        )
        proc = await asyncio.create_subprocess_exec(
            str(app / "service" / "run"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            from dbus_fast.aio import MessageBus

            bus = await MessageBus(bus_address=address).connect()
            mirror = BusMirror(bus)
            await mirror.start()
            deadline = time.monotonic() + 30
            kinds: set[str] = set()
            while time.monotonic() < deadline:
                kinds = {m.kind for m in mirror.services.values()
                         if m.values.get("/Connected") == 1 and isinstance(m.values.get("/Ac/Power"), (int, float))}
                if {"grid", "pvinverter"} <= kinds or proc.returncode is not None:
                    break
                await asyncio.sleep(0.2)
            await mirror.stop()
            bus.disconnect()
            assert {"grid", "pvinverter"} <= kinds, (kinds, mirror.services.keys())
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode()[-2000:]
