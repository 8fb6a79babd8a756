"""Coverage-guided fuzzing of the authres parsers and renderer.

Target and properties: ``fuzz.targets.target_authres``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("authres")
