"""Training with Lightning: the LightningModule, its callbacks, the run folder's files and the fit/test runs."""
