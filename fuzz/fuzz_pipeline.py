"""Coverage-guided fuzzing of the pure pipeline: parse_message, Engine.analyse, decide, render.

Target and properties: ``fuzz.targets.target_pipeline``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("pipeline", ("dkim", "spf"))
