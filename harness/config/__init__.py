"""Every config of the harness, and the one rule for YAML files that name a base file.

- `experiment`: `ExperimentConfig`, a run's config, every field declared once (`param`);
- `table`: `TableSpec`, a paper table (`ablations/*.yaml`);
- `sweep`: `SweepSpec`, a search space (`experiments/sweeps/*.yaml`);
- `build`: `BuildConfig`, what `granalign cache build` takes;
- `settings`: `Settings`, where a table or sweep reads and writes, and the command line's
  overrides and substitutions;
- `files`: `base:` is relative to the file that says it, for all of them.
"""

from harness.config.experiment import ExperimentConfig, from_dict, load_config, parse_override

__all__ = ["ExperimentConfig", "from_dict", "load_config", "parse_override"]
