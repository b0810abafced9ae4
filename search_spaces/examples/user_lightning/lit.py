"""An ordinary LightningModule and LightningDataModule on scikit-learn's digits (8x8 images).

Nothing here knows about raytune-opt: the spec names the classes (model.name, data.dataset)
and their keyword arguments (model.args, data.args). The module gets num_classes from the
data because its signature names it; the data module gets seed and val_fraction likewise.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LitNet(L.LightningModule):
    """A small MLP classifier; logs train_loss, val_loss and val_accuracy every epoch."""

    def __init__(self, hidden: int = 64, lr: float = 1e-3, num_classes: int = 10):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):  # what promotion exports to ONNX and INT8
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        # sync_dist: with several workers each rank validates on its shard; the epoch's figure
        # is their mean, the same on every rank (what Lightning recommends for epoch-level logs).
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean(), on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.5)}


class DigitsData(L.LightningDataModule):
    """scikit-learn's 1,797 digits, split into train / val / test (seeded), scaled to [0, 1]."""

    def __init__(self, batch_size: int = 64, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2):
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def setup(self, stage=None):
        if hasattr(self, "train_set"):
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_test, n_val = int(len(y) * self.test_fraction), int(len(y) * self.val_fraction)
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        self.train_set, self.val_set = TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)
