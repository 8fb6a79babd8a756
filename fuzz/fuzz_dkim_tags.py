"""Coverage-guided fuzzing of checks.dkim.parse_tag_list and key_name (DKIM tag=value lists).

Target and properties: ``fuzz.targets.target_dkim_tags``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("dkim_tags")
