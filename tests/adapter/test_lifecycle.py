"""The daemon's life: reload on SIGHUP, graceful stop, readiness, socket activation, privileges."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import (
    REPO,
    MilterProcess,
    free_tcp_port,
    render_toml,
    start_on_first_connection,
)

MESSAGE = (b"From: a@sender.example\r\nTo: b@example.net\r\nSubject: hi\r\n"
           b"Message-ID: <1@sender.example>\r\n\r\nbody\r\n")
NO_DNS: dict[str, object] = {}  # filled by the dns fixture: a server that knows no names


@pytest.fixture(scope="module", autouse=True)
def dns() -> Iterator[DnsTestServer]:
    """An empty zone: every lookup is a quick NXDOMAIN, so verdicts do not depend on DNS."""
    with DnsTestServer() as server:
        NO_DNS.update({"nameservers": [server.nameserver], "timeout": "1s"})
        yield server


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def inserted(result: mc.SessionResult) -> str:
    return next(e.value for e in result.header_edits if e.kind == "insert")


def finish_message(client: mc.MilterClient) -> mc.EndOfMessage:
    """Headers, body and end of MESSAGE on a session already past DATA."""
    for line in MESSAGE.split(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        client.header(name.decode(), value)
    client.eoh()
    client.body(b"body\r\n")
    return client.eom()


def one_message(process: MilterProcess) -> mc.SessionResult:
    with mc.MilterClient.connect(process.socket_spec) as client:
        return client.send_message(MESSAGE, client_ip="192.0.2.10", helo="client.test.example",
                                   mail_from="a@sender.example", rcpts=["b@example.net"])


@pytest.fixture
def milter() -> Iterator[MilterProcess]:
    process = MilterProcess({"milter": {"authserv_id": "before.test.example"}, "dns": NO_DNS})
    with process:
        yield process


def config_with(process: MilterProcess, authserv_id: str) -> str:
    config = {k: dict(v) for k, v in process.config.items()}
    config["milter"]["authserv_id"] = authserv_id
    return render_toml(config)


def _open_message(client: mc.MilterClient) -> None:
    """A session up to an answered DATA: the milter holds a message in flight."""
    client.negotiate()
    client.smtp_connect("[192.0.2.10]", "4", 0, "192.0.2.10")
    client.helo("client.test.example")
    client.mail_from("<a@sender.example>")
    client.rcpt("<b@example.net>")
    client.data()


def test_sighup_reloads_without_dropping_a_session_in_flight(milter: MilterProcess) -> None:
    assert milter.process is not None
    with mc.MilterClient.connect(milter.socket_spec) as client:
        _open_message(client)  # DATA is answered: the milter has seen MAIL FROM
        milter.write_config(config_with(milter, "after.test.example"))
        milter.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in milter.log()), milter.log()
        # The message begun before the reload finishes on the same connection, with the
        # configuration it started with.
        end = finish_message(client)
    edits = mc.header_edits(end.modifications)
    assert any(e.kind == "insert" and "before.test.example" in e.value for e in edits)
    # New messages use the new configuration; the process never restarted.
    assert inserted(one_message(milter)).startswith(" after.test.example;")
    assert milter.process.poll() is None


def test_a_broken_config_on_reload_keeps_the_old_one_running(milter: MilterProcess) -> None:
    assert milter.process is not None
    milter.write_config('[dns]\ntimeout = "soon"\n')
    milter.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in milter.log()), milter.log()
    assert "[dns] timeout" in milter.log()
    assert inserted(one_message(milter)).startswith(" before.test.example;")
    assert milter.process.poll() is None


def test_a_reload_names_restart_only_keys_as_the_file_writes_them(
        milter: MilterProcess) -> None:
    assert milter.process is not None
    config = {k: dict(v) for k, v in milter.config.items()}
    config["metrics"]["listen"] = f"127.0.0.1:{free_tcp_port()}"
    config["milter"]["workers"] = 2
    milter.write_config(render_toml(config))
    milter.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "configuration reloaded" in milter.log()), milter.log()
    assert "reloaded, but [metrics] listen, [milter] workers only change on restart" \
        in milter.log()
    assert "metrics_listen" not in milter.log()


def test_sigterm_lets_the_process_exit_cleanly(milter: MilterProcess) -> None:
    one_message(milter)
    assert milter.stop() == 0
    assert "finishing messages in flight" in milter.log()
    assert "mailsec-milter stopped" in milter.log()


def test_readiness_reload_and_stop_are_told_to_systemd() -> None:
    # Not pytest's tmp_path: its parent is 0700 and the daemon sends after dropping root.
    folder = Path(tempfile.mkdtemp(prefix="notify-"))
    os.chmod(folder, 0o755)
    path = folder / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    os.chmod(path, 0o777)
    receiver.settimeout(15)
    process = MilterProcess({"dns": NO_DNS}, env={"NOTIFY_SOCKET": str(path)}).start()
    try:
        assert receiver.recv(4096).startswith(b"READY=1")
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        assert receiver.recv(4096).startswith(b"RELOADING=1")
        assert receiver.recv(4096).startswith(b"READY=1")
        process.process.send_signal(signal.SIGTERM)
        assert receiver.recv(4096).startswith(b"STOPPING=1")
    finally:
        process.stop()
        receiver.close()


@pytest.mark.skipif(not Path("/usr/bin/systemd-socket-activate").exists(),
                    reason="systemd-socket-activate not installed")
def test_socket_activation_accepts_on_the_inherited_socket() -> None:
    port = free_tcp_port()
    process = MilterProcess(
        {"milter": {"socket": "inet:1@127.0.0.1"}, "dns": NO_DNS},  # never opened: fd 3 is used
        prefix=["/usr/bin/systemd-socket-activate", "-l", f"127.0.0.1:{port}"])
    process.config["milter"]["socket"] = f"inet:{port}@127.0.0.1"  # where clients connect

    trigger = start_on_first_connection(port)  # systemd starts services on demand too
    process.start()
    trigger.join()
    try:
        assert "listening on fd:3" in process.log()
        assert inserted(one_message(process)).startswith(" mx.test.example;")
    finally:
        process.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege tests need root")
def test_started_as_root_it_drops_to_the_named_user() -> None:
    with MilterProcess({"dns": NO_DNS}) as process:
        assert process.process is not None
        status = Path(f"/proc/{process.process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(pwd.getpwnam("nobody").pw_uid)}


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege tests need root")
def test_refuses_to_run_as_root_without_a_user(tmp_path: Path) -> None:
    config = tmp_path / "root.toml"
    config.write_text(render_toml({"milter": {"socket": f"inet:{free_tcp_port()}@127.0.0.1",
                                              "user": ""},
                                   "metrics": {"listen": ""}, "dns": NO_DNS}))
    result = subprocess.run([sys.executable, "-m", "mailsec_milter", "run", "--config",
                             str(config)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "refusing to run as root" in result.stderr


def test_unix_socket_mode_is_applied() -> None:
    process = MilterProcess({"milter": {"socket_mode": "0660"}, "dns": NO_DNS},
                            unix_socket=True)
    process.start(widen_unix_socket=False)
    try:
        mode = os.stat(process.socket_spec.split(":", 1)[1]).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
    finally:
        process.stop()


def test_metrics_bind_loopback_by_default() -> None:
    from mailsec_milter.config import Settings

    assert Settings.defaults().metrics_listen.startswith("127.0.0.1:")


def scrape(process: MilterProcess) -> str:
    import urllib.request

    assert process.metrics_url is not None
    with urllib.request.urlopen(process.metrics_url, timeout=10) as reply:
        return str(reply.read().decode())


def sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def test_workers_share_the_socket_and_metrics_add_up() -> None:
    with MilterProcess({"milter": {"workers": 2}, "dns": NO_DNS}) as process:
        assert len(process.worker_pids()) == 2
        for _ in range(6):
            one_message(process)
        # Workers push their numbers about once a second; /metrics never waits for them.
        assert wait_until(lambda: sample(scrape(process), "mailsec_messages_total{") == 6)
        text = scrape(process)
        assert "mailsec_workers 2" in text
        assert text.count("# TYPE mailsec_messages_total counter") == 1


def test_a_dead_worker_is_replaced_and_counters_do_not_go_back() -> None:
    with MilterProcess({"milter": {"workers": 1}, "dns": NO_DNS}) as process:
        one_message(process)
        assert wait_until(lambda: sample(scrape(process), "mailsec_messages_total{") == 1)
        (victim,) = process.worker_pids()
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: process.worker_pids() not in ([], [victim]), 20)
        assert wait_until(lambda: "mailsec_workers 1" in scrape(process), 20)
        # The killed worker's last pushed numbers are kept.
        assert sample(scrape(process), "mailsec_messages_total{") == 1
        assert inserted(one_message(process)).startswith(" mx.test.example;")
        assert wait_until(lambda: sample(scrape(process), "mailsec_messages_total{") == 2)
        assert "mailsec_worker_restarts_total 1" in scrape(process)


def monotonic_samples(text: str) -> dict[str, float]:
    """Every counter and histogram sample of a scrape, by its full series name."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text)
            if family.type in ("counter", "histogram") for s in family.samples}


def assert_never_decreased(before: dict[str, float], after: dict[str, float]) -> None:
    assert set(before) <= set(after), set(before) - set(after)
    dropped = {name: (value, after[name]) for name, value in before.items()
               if after[name] < value}
    assert not dropped, dropped


class Traffic:
    """Messages sent one after another on a thread until stopped; a session cut by a killed
    worker is simply not counted as sent."""

    def __init__(self, process: MilterProcess) -> None:
        self.process = process
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="traffic", daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                one_message(self.process)
                self.sent += 1
            except (OSError, mc.MilterProtocolError):
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)


def test_counters_never_decrease_while_workers_are_killed_under_traffic() -> None:
    with MilterProcess({"milter": {"workers": 3}, "dns": NO_DNS}) as process, \
            Traffic(process) as traffic:
        assert process.process is not None
        assert wait_until(lambda: sample(scrape(process), "mailsec_messages_total{") > 0, 20)
        previous = monotonic_samples(scrape(process))
        kills = 0
        for round_ in range(40):
            if round_ % 5 == 0:
                workers = process.worker_pids()  # children of the daemon this test started
                if workers:
                    os.kill(workers[round_ % len(workers)], signal.SIGKILL)
                    kills += 1
            time.sleep(0.1)
            current = monotonic_samples(scrape(process))
            assert_never_decreased(previous, current)
            previous = current
        assert kills >= 4
        assert wait_until(lambda: "mailsec_workers 3" in scrape(process), 30)
    restarts = next(v for k, v in previous.items() if k.startswith("mailsec_worker_restarts"))
    assert restarts >= kills - 1  # the last kill may not have been replaced yet
    # Never counted twice: the sum is at most what was sent (a killed worker's last second
    # of increments may be missing, see docs/METRICS.md).
    counted = sum(v for k, v in previous.items() if k.startswith("mailsec_messages_total"))
    assert 0 < counted <= traffic.sent + kills  # + a session cut after its verdict was counted


def test_a_stopped_worker_does_not_make_counters_dip() -> None:
    """A worker that cannot answer (here: SIGSTOP) counts with the numbers it pushed last."""
    with MilterProcess({"milter": {"workers": 2}, "dns": NO_DNS}) as process:
        for _ in range(6):
            one_message(process)
        assert wait_until(lambda: sample(scrape(process), "mailsec_messages_total{") == 6)
        before = monotonic_samples(scrape(process))
        slow, other = process.worker_pids()
        os.kill(slow, signal.SIGSTOP)
        try:
            for _ in range(3):
                text = scrape(process)
                assert_never_decreased(before, monotonic_samples(text))
                assert sample(text, "mailsec_messages_total{") == 6
                assert "mailsec_workers 2" in text
        finally:
            os.kill(slow, signal.SIGCONT)
        assert process.worker_pids() == [slow, other]


def pid_is_gone(pid: int) -> bool:
    """No such process, or a zombie (it has exited and holds nothing; its new parent, not the
    test, reaps it)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


ACCEPT_SYSCALLS = {"43", "288"}  # accept, accept4 on x86_64


def blocked_in_accept(pid: int) -> bool:
    """Is the worker's main thread (libmilter's listener) asleep in accept()?"""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ACCEPT_SYSCALLS
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_no_worker_is_left_blocked_in_accept_on_the_shared_socket() -> None:
    """Every worker's poll wakes for a new connection; one accept() wins. On a blocking
    listener the others then slept in accept(), holding libmilter's listener lock, where
    neither libmilter's stop nor SIGTERM reaches them (the orphan of issue 13)."""
    with MilterProcess({"milter": {"workers": 2}, "dns": NO_DNS}) as process:
        workers = process.worker_pids()
        for _ in range(30):
            one_message(process)
            time.sleep(0.1)  # a loser of the race would be asleep in accept() by now
            assert not [pid for pid in workers if blocked_in_accept(pid)]
        assert process.stop() == 0
        assert "did not stop in time" not in process.log()


@pytest.mark.parametrize("draining", [False, True], ids=["serving", "draining"])
def test_no_worker_outlives_a_killed_supervisor(draining: bool) -> None:
    """With recent sessions and idle connections open (and, in one case, the supervisor
    killed in the middle of its drain), SIGKILL of the supervisor ends every worker, and the
    milter port can be bound again."""
    process = MilterProcess({"milter": {"workers": 2}, "dns": NO_DNS})
    port = int(process.socket_spec.split(":")[1].split("@")[0])
    idle: list[mc.MilterClient] = []
    with process:
        assert process.process is not None
        for _ in range(4):
            one_message(process)
        for _ in range(4):
            client = mc.MilterClient.connect(process.socket_spec)
            client.negotiate()
            idle.append(client)  # open and silent: a drain would wait for these
        workers = process.worker_pids()
        assert len(workers) == 2
        if draining:
            process.process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "finishing messages in flight" in process.log())
        process.process.kill()
        process.process.wait(10)
        try:
            assert wait_until(lambda: all(pid_is_gone(pid) for pid in workers), 30), \
                [pid for pid in workers if not pid_is_gone(pid)]
        finally:
            for client in idle:
                with contextlib.suppress(OSError):
                    client.close()
        assert wait_until(lambda: port_is_free(port), 10)


def test_repeated_sighups_never_stop_the_milter() -> None:
    """libmilter's own signal thread would stop on SIGHUP; the supervisor takes every one."""
    with MilterProcess({"milter": {"workers": 2}, "dns": NO_DNS}) as process:
        assert process.process is not None
        for _ in range(10):
            process.process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        # Pending SIGHUPs merge (standard signals do not queue): at least one reload ran.
        assert wait_until(lambda: "configuration reloaded" in process.log(), 60)
        time.sleep(1)
        assert process.process.poll() is None
        assert len(process.worker_pids()) == 2
        assert inserted(one_message(process)).startswith(" mx.test.example;")


def test_sigterm_lets_a_message_in_flight_finish() -> None:
    with MilterProcess({"dns": NO_DNS}) as process:
        assert process.process is not None
        with mc.MilterClient.connect(process.socket_spec) as client:
            _open_message(client)  # DATA is answered: the worker is mid-message now
            process.process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "finishing messages in flight" in process.log())
            # A new connection is refused while this one finishes.
            with mc.MilterClient.connect(process.socket_spec) as late:
                late.negotiate()
                refused = late.smtp_connect("[192.0.2.11]", "4", 0, "192.0.2.11")
                assert refused is not None and refused.action == "tempfail"
            end = finish_message(client)
        assert end.reply.action == "accept"
        assert any(m.action == "insheader" for m in end.modifications)
        assert process.process.wait(30) == 0
