"""Coverage-guided fuzzing of checks.dmarc.parse_record (DMARC policy records, both modes).

Target and properties: ``fuzz.targets.target_dmarc_record``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("dmarc_record")
