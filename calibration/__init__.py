"""Calibration: text -> token windows (data.py), per-Linear input statistics shared by pruning and quantization
(stats.py), and the calibration settings every calibrating stage takes (settings.py, light: no torch)."""
