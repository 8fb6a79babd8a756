"""The audit CLI end to end in a private network namespace (tests/support/auditsandbox.py): real
DNS on 127.0.0.1:53 answering UDP and TCP, the namespace's own resolv.conf and hosts pointing at
it, and the MTA-STS policies over HTTPS with a test CA trusted through REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("openssl") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(autouse=True)
def _namespace_available() -> None:
    """Skip without root/unshare/openssl, but fail under CI=true (CI must run these)."""
    if not _can_unshare():
        reason = "needs root and unshare --net --mount (and openssl)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)


def audit(tmp_path: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        ["unshare", "--net", "--mount", sys.executable, "-m", "tests.support.auditsandbox",
         str(tmp_path), *args], capture_output=True, text=True, cwd=ROOT, timeout=280)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Traceback" not in result["stderr"] and "Traceback" not in result["stdout"]
    return result


def by_domain(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["domain"]: d for d in json.loads(result["stdout"])["domains"]}


def test_a_domain_at_the_baseline_exits_0(tmp_path: Path) -> None:
    result = audit(tmp_path, "--json", "good.test")
    assert result["returncode"] == 0, result
    good = by_domain(result)["good.test"]
    assert good["meets_baseline"] is True
    assert good["dmarc"]["policy"] == "reject"
    assert good["dmarc"]["record_domain"] == "good.test"
    assert good["spf"]["valid"] is True and good["spf"]["dns_lookups"] == 1
    # fetched over HTTPS from the loopback server through the namespace's resolver
    assert good["mta_sts"]["mode"] == "enforce" and good["mta_sts"]["max_age"] == 604800
    assert good["mta_sts"]["mx_not_in_policy"] == []
    assert good["tls_rpt"]["present"] is True
    assert good["dnssec"] is False and good["errors"] == []


def test_p_none_and_an_mx_missing_from_the_policy_exit_1_naming_both(tmp_path: Path) -> None:
    result = audit(tmp_path, "weak.test")
    assert result["returncode"] == 1, result
    text = result["stdout"]
    first = text.splitlines()[0]
    assert first.startswith("== weak.test: p=none") and "BELOW baseline p=reject" in first
    assert "DMARC policy p=none" in text and "publish p=quarantine after" in text
    assert "MX mx2.weak.test is not in the MTA-STS policy" in text
    assert "add 'mx: mx2.weak.test' to the policy" in text


def test_rua_at_an_unauthorised_third_party_and_spf_over_10_lookups(tmp_path: Path) -> None:
    result = audit(tmp_path, "--json", "thirdparty.test", "authorised.test", "spf11.test")
    domains = by_domain(result)
    assert domains["thirdparty.test"]["dmarc"]["rua_unauthorised"] == ["reports.test"]
    assert any("has not authorised reports" in f["text"]
               for f in domains["thirdparty.test"]["findings"])
    assert domains["authorised.test"]["dmarc"]["rua_unauthorised"] == []
    spf = domains["spf11.test"]["spf"]
    assert spf["valid"] is False and spf["dns_lookups"] == 11
    assert any(f["area"] == "spf" and "11/10" in f["text"]
               for f in domains["spf11.test"]["findings"])
    # the baseline is the DMARC ladder: all three publish p=reject
    assert result["returncode"] == 0


def test_bad_input_is_one_clear_line_each_and_exit_2(tmp_path: Path) -> None:
    result = audit(tmp_path, "hang.test", "garbage.test", "timeout.test", "nope.test",
                   "not a domain", "localhost")
    assert result["returncode"] == 2, result
    text = result["stdout"]
    assert "ERROR nope.test does not exist (NXDOMAIN)" in text
    assert "ERROR 'not a domain' is not a domain name" in text
    assert "ERROR 'localhost' is not a domain name" in text
    assert "ERROR DMARC lookup failed" in text and "timed out" in text
    # the HTTPS server hanging or answering garbage is the domain's finding, not a crash
    assert "MTA-STS is broken" in text and "Read timed out" in text
    assert "BadStatusLine" in text
    assert "\x00" not in text


def test_own_writes_the_result_file_for_metrics(tmp_path: Path) -> None:
    result = audit(tmp_path, "--own", "--write-metrics")
    assert result["returncode"] == 1  # weak.test is below
    document = json.loads((tmp_path / "audit.json").read_text())
    assert document["ok"] is True and document["last_success"] == document["finished"]
    assert document["domains"]["good.test"] == {
        "dmarc_policy": 2, "mta_sts_mode": "enforce", "tls_rpt": True, "dane": False,
        "meets_baseline": True, "errors": 0}
    assert document["domains"]["weak.test"]["dmarc_policy"] == 0
    assert document["domains"]["weak.test"]["meets_baseline"] is False


def test_check_mx_tls_probes_port_25_only_when_asked(tmp_path: Path) -> None:
    # nothing listens on 127.0.0.1:25 in the namespace: the probe's refusal is a finding
    probed = by_domain(audit(tmp_path, "--json", "--check-mx-tls", "good.test"))["good.test"]
    assert probed["mx"]["starttls_failed"] == ["mx1.good.test"]
    assert any(f["area"] == "starttls" and "Connection refused" in f["text"]
               for f in probed["findings"])
    plain = by_domain(audit(tmp_path, "--json", "good.test"))["good.test"]
    assert "starttls_failed" not in plain["mx"]
    assert not any(f["area"] == "starttls" for f in plain["findings"])
