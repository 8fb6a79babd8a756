"""Coverage-guided fuzzing of addresses.author_domains.

Target and properties: ``fuzz.targets.target_author_domains``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("author_domains")
