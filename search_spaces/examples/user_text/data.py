"""An example user data set: short "documents" of token ids, one topic each.

Any function returning ``raytune_opt.DataBundle(...)``, or just ``(train, val)`` or
``(train, val, test)`` torch Datasets of ``(input, label)`` pairs, will do. A test set
(``DataBundle(test=...)``) is never shown to a trial: the best trial and every promoted
artifact are measured on it once the sweep is over. This one generates its data (nothing is
downloaded): each topic has a few keywords, and a document mixes background words with
words of its topic; ``noise`` is the share of words drawn from another topic.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from raytune_opt import DataBundle

TOPICS = ("sports", "politics", "science", "music")


class Documents(Dataset):
    """Token-id sequences (int64, fixed length) and their topic index."""

    def __init__(self, tokens: torch.Tensor, topics: torch.Tensor):
        self.tokens, self.topics = tokens, topics

    def __len__(self) -> int:
        return len(self.topics)

    def __getitem__(self, i: int):
        return self.tokens[i], self.topics[i]


def topics(vocab_size: int = 200, length: int = 24, n: int = 2000, noise: float = 0.3, seed: int = 0,
           val_fraction: float = 0.2, test_fraction: float = 0.2) -> DataBundle:
    """``n`` documents of ``length`` tokens from a ``vocab_size`` vocabulary: ``test_fraction``
    of them held out as the test set first, then ``val_fraction`` of the rest for validation.

    ``seed``, ``val_fraction`` and ``test_fraction`` come from the spec (raytune-opt passes
    them because the signature names them); the other arguments are data.args.
    """
    if vocab_size < 10 * len(TOPICS) + 1:
        raise ValueError(f"vocab_size must be at least {10 * len(TOPICS) + 1} (got {vocab_size})")
    g = torch.Generator().manual_seed(seed)
    keywords = torch.arange(len(TOPICS) * 10).view(len(TOPICS), 10)  # the first ids are keywords
    topic = torch.randint(len(TOPICS), (n,), generator=g)
    tokens = torch.randint(len(TOPICS) * 10, vocab_size, (n, length), generator=g)  # background words
    topical = torch.rand(n, length, generator=g) < 0.25
    other = torch.rand(n, length, generator=g) < noise
    drawn_topic = torch.where(other, torch.randint(len(TOPICS), (n, length), generator=g), topic[:, None])
    word = keywords[drawn_topic, torch.randint(10, (n, length), generator=g)]
    tokens = torch.where(topical, word, tokens)
    n_test = int(n * test_fraction)
    n_val = int((n - n_test) * val_fraction)
    test, rest = slice(0, n_test), slice(n_test, None)  # the documents are drawn at random: no shuffle needed
    tokens, topic, held_out = tokens[rest], topic[rest], Documents(tokens[test], topic[test])
    return DataBundle(train=Documents(tokens[n_val:], topic[n_val:]), val=Documents(tokens[:n_val], topic[:n_val]),
                      test=held_out if n_test else None, num_classes=len(TOPICS), class_names=TOPICS)
