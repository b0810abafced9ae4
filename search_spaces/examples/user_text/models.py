"""An example user model for token ids: mean of word embeddings, then a linear classifier."""

from __future__ import annotations

from torch import nn


class BagOfEmbeddings(nn.Module):
    """(N, L) int64 token ids -> (N, num_classes) logits.

    Args:
        vocab_size: the data set's vocabulary (model.args.vocab_size).
        dim: embedding width (model.args.dim, searched).
        num_classes: given by raytune-opt from the data set, because the signature names it.
    """

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(dim=1))
