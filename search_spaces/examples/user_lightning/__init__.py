"""A user package for search_spaces/examples/digits_lightning.yaml: an existing LightningModule
and LightningDataModule, swept unchanged with train.loop: lightning."""
