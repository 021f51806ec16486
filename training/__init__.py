"""Offline work on data folders: training (several folders, class × source sampling),
evaluation with its metrics and shortcut audit, calibration, and fitting the
not-a-chest-X-ray guard. Sits above ``model``; nothing served imports it."""
