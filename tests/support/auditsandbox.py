"""Run ``mailsec-milter audit`` inside a private network namespace with test zones.

Run as root through ``unshare --net --mount`` (tests/audit/test_audit_netns.py does): brings
``lo`` up, serves the zones below from tests/support/dnsserver.py on 127.0.0.1:53 (UDP and TCP),
bind-mounts a resolv.conf naming it over /etc/resolv.conf (so the system resolver that
checkdmarc's HTTPS fetch uses answers from the same zones), serves the MTA-STS policies over
HTTPS on 127.0.0.1:443 with a certificate from a throwaway test CA trusted through
REQUESTS_CA_BUNDLE, then runs the audit CLI as a subprocess and prints one JSON line
``{"returncode", "stdout", "stderr"}``. Everything it starts lives in the namespace and ends with
this process.

Usage: python -m tests.support.auditsandbox WORKDIR AUDIT-ARGS...
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.dnsserver import DnsTestServer

STS_ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.{d}\nmax_age: 604800\n"
POLICIES = {
    "mta-sts.good.test": STS_ENFORCE.format(d="good.test"),
    # weak.test has mx1 and mx2; its policy names only mx1
    "mta-sts.weak.test": STS_ENFORCE.format(d="weak.test"),
}
HANG = "mta-sts.hang.test"
GARBAGE = "mta-sts.garbage.test"


def build_zone(server: DnsTestServer) -> None:
    """The test domains (see tests/audit/test_audit_netns.py for what each one shows)."""
    def domain(name: str, dmarc: str, mx: tuple[str, ...] = ("mx1",), sts: bool = True,
               spf: str = "v=spf1 mx -all") -> None:
        server.add(name, "TXT", spf)
        server.add(f"_dmarc.{name}", "TXT", dmarc)
        for preference, host in enumerate(mx, start=1):
            server.add(name, "MX", f"{preference * 10} {host}.{name}")
            server.add(f"{host}.{name}", "A", "127.0.0.1")
        if sts:
            server.add(f"_mta-sts.{name}", "TXT", "v=STSv1; id=20261208")
            server.add(f"mta-sts.{name}", "A", "127.0.0.1")
        server.add(f"_smtp._tls.{name}", "TXT", f"v=TLSRPTv1; rua=mailto:tls@{name}")

    domain("good.test", "v=DMARC1; p=reject; rua=mailto:dmarc@good.test")
    domain("weak.test", "v=DMARC1; p=none; rua=mailto:dmarc@weak.test", mx=("mx1", "mx2"))
    domain("thirdparty.test", "v=DMARC1; p=reject; rua=mailto:dmarc@reports.test", sts=False)
    domain("authorised.test", "v=DMARC1; p=reject; rua=mailto:dmarc@reports.test", sts=False)
    server.add("authorised.test._report._dmarc.reports.test", "TXT", "v=DMARC1")
    includes = " ".join(f"include:i{n}.spf11.test" for n in range(11))
    domain("spf11.test", "v=DMARC1; p=reject; rua=mailto:dmarc@spf11.test", sts=False,
           spf=f"v=spf1 {includes} -all")
    for n in range(11):
        server.add(f"i{n}.spf11.test", "TXT", "v=spf1 -all")
    domain("hang.test", "v=DMARC1; p=reject; rua=mailto:dmarc@hang.test")
    domain("garbage.test", "v=DMARC1; p=reject; rua=mailto:dmarc@garbage.test")
    server.add("timeout.test", "A", "192.0.2.1")
    server.drop("_dmarc.timeout.test")


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    stop = threading.Event()

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        if host == HANG:
            self.stop.wait(120)  # hangs until the sandbox ends (the client times out first)
            return
        if host == GARBAGE:
            self.wfile.write(b"\x00\xffnot HTTP at all\r\n\r\n")
            return
        body = POLICIES.get(host)
        if body is None or self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_ca(work: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for every mta-sts.* name (openssl)."""
    names = [*POLICIES, HANG, GARBAGE]
    san = ",".join(f"DNS:{n}" for n in names)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=mailsec-milter audit test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=mta-sts.good.test")
    (work / "san.ext").write_text(f"subjectAltName={san}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return work / "ca.pem", work / "server.pem", work / "server.key"


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")  # nothing else: names come from the test DNS
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    ca, cert, key = make_ca(work)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 443), _PolicyHandler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = work / "audit.toml"
    config.write_text('[dns]\nnameservers = ["127.0.0.1:53"]\ntimeout = "1s"\n'
                      '[audit]\ndomains = ["good.test", "weak.test"]\n'
                      f'result_file = "{work / "audit.json"}"\n')
    with DnsTestServer(port=53) as server:
        build_zone(server)
        env = dict(os.environ, REQUESTS_CA_BUNDLE=str(ca))
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-m", "mailsec_milter", "audit", "--config",
             str(config), *argv[1:]], capture_output=True, text=True, env=env, timeout=240)
        _PolicyHandler.stop.set()
    httpd.shutdown()
    print(json.dumps({"returncode": done.returncode, "stdout": done.stdout,
                      "stderr": done.stderr}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
