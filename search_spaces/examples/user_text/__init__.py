"""An example user package: its own data set (synthetic token sequences) and model."""
