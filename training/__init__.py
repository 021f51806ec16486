"""Offline work on data folders: training, evaluation and its metrics, calibration, and
fitting the not-a-chest-X-ray guard. Sits above ``model``; nothing served imports it."""
