"""Coverage-guided fuzzing of checks.spf.check_spf with fuzzed records, client IPs and identities.

Target and properties: ``fuzz.targets.target_spf``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("spf", ("spf",))
