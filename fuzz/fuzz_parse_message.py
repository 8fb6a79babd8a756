"""Coverage-guided fuzzing of model.parse_message (raw message bytes into header fields and body).

Target and properties: ``fuzz.targets.target_parse_message``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("parse_message")
