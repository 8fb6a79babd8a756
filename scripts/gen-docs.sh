#!/usr/bin/env bash
# Regenerates the generated parts of docs/ from the code (the tests fail when they drift).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/.venv/bin/python" - "$here" <<'PY'
import re, subprocess, sys
from pathlib import Path
root = Path(sys.argv[1])
doc = root / "docs" / "CONFIGURATION.md"
table = subprocess.run([str(root / ".venv/bin/mailsec-milter"), "print-defaults", "--markdown"],
                       check=True, capture_output=True, text=True).stdout
text = doc.read_text()
text = re.sub(r"(<!-- generated: mailsec-milter print-defaults --markdown -->\n).*?(<!-- end generated -->)",
              lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
doc.write_text(text)
sys.path.insert(0, str(root))
from mailsec_milter.metrics import render_markdown
doc = root / "docs" / "METRICS.md"
text = doc.read_text()
text = re.sub(r"(<!-- generated: metrics -->\n).*?(<!-- end generated -->)",
              lambda m: m.group(1) + render_markdown() + m.group(2), text, flags=re.S)
doc.write_text(text)
man = subprocess.run([str(root / ".venv/bin/mailsec-milter"), "manpage"], check=True,
                     capture_output=True, text=True).stdout
(root / "docs" / "mailsec-milter.8").write_text(man)
PY
