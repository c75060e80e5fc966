"""Prediction on people's own photos with a trained checkpoint: no Lightning, no dataset, no network."""
