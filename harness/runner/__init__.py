"""Running the method: one config (`trial`), the paper's tables (`tables`) and sweeps
(`sweeps`) as Optuna studies shared by worker processes (`studies`), with `Settings`."""
