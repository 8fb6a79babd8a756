"""Coverage-guided fuzzing of config.settings_from_toml, the loader behind load_settings.

Target and properties: ``fuzz.targets.target_config_text``. Usage: see fuzz/README.md.
"""

from _harness import main

if __name__ == "__main__":
    main("config_text")
