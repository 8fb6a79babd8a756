"""Coverage-guided fuzzing of checks.dkim.check_dkim on mutated messages and keys.

Target and properties: ``fuzz.targets.target_dkim_verify``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("dkim_verify", ("dkim",))
