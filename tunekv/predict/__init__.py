"""Answers without a run: the memory plan (`planner`), the step-cost fit and its store (`costmodel`),
calibration runs that feed it (`calibrate`) and the simulated engine built on it (`simulate`)."""
