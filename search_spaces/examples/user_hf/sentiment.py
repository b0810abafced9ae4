"""The pieces of an ordinary Hugging Face ``Trainer`` script: a model, tokenized data sets and
``compute_metrics``. Nothing here knows about raytune-opt: the spec names ``make_model``
(model.name) and ``load_data`` (data.dataset) and their keyword arguments (model.args,
data.args); ``load_data`` also gets seed, val_fraction and test_fraction because its signature
names them.

Nothing is downloaded. The model is a 2-layer BERT built from a config (hidden size 32;
``make_model``) or a 2-layer GPT-2, decoder-only (``make_gpt2``), its weights drawn from a
fixed seed so that every call returns the same "pretrained" base, as ``from_pretrained`` does
(its word embeddings know which words are positive); the text is made here: short reviews of filler words and one or two
sentiment words, some negated ("not good"), labelled positive or negative, tokenized by a
word-level tokenizer with a fixed vocabulary. On a GPU node, the same spec takes a real
checkpoint instead (README: "Hugging Face Trainer").
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

POSITIVE = ("good", "great", "excellent", "fine", "lovely", "superb", "enjoyable", "brilliant")
NEGATIVE = ("bad", "awful", "terrible", "poor", "dull", "boring", "weak", "dreadful")
FILLER = ("the", "movie", "film", "was", "plot", "acting", "and", "a", "it", "this", "story", "really", "quite",
          "cast", "ending", "music", "i", "thought", "overall", "very", "scenes", "director", "script", "is")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
VOCAB = SPECIAL + ("not",) + POSITIVE + NEGATIVE + FILLER
MAX_LENGTH = 24


class WordTokenizer:
    """Whitespace words -> ids of :data:`VOCAB`, with [CLS] ... [SEP], padded to ``max_length``
    (what a Hugging Face tokenizer called with ``padding="max_length"`` returns)."""

    def __init__(self, max_length: int = MAX_LENGTH):
        self.ids = {word: i for i, word in enumerate(VOCAB)}
        self.max_length = max_length
        self.pad_token_id = 0

    def __call__(self, text: str) -> dict:
        ids = [2] + [self.ids.get(w, 1) for w in text.lower().split()][: self.max_length - 2] + [3]
        mask = [1] * len(ids) + [0] * (self.max_length - len(ids))
        return {"input_ids": ids + [self.pad_token_id] * (self.max_length - len(ids)), "attention_mask": mask}


def review(rng: random.Random) -> tuple[str, int]:
    """One review and its label (1 positive): its sentiment words' polarities, a "not" flipping one."""
    while True:
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 12))]
        score = 0
        for _ in range(rng.randint(1, 2)):
            positive = rng.random() < 0.5
            phrase = [rng.choice(POSITIVE if positive else NEGATIVE)]
            if rng.random() < 0.3:
                phrase, positive = ["not", *phrase], not positive
            at = rng.randint(0, len(words))
            words[at:at] = phrase
            score += 1 if positive else -1
        if score:
            return " ".join(words), int(score > 0)


class Reviews(Dataset):
    """Tokenized reviews as a Trainer takes them: dicts of input_ids, attention_mask and labels."""

    def __init__(self, texts: list[str], labels: list[int], tokenizer: WordTokenizer):
        encoded = [tokenizer(t) for t in texts]
        self.input_ids = torch.tensor([e["input_ids"] for e in encoded])
        self.attention_mask = torch.tensor([e["attention_mask"] for e in encoded])
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def compute_metrics(eval_pred) -> dict:
    """Accuracy of the logits (the Trainer reports it as eval_accuracy)."""
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def load_data(n: int = 1500, label_noise: float = 0.05, seed: int = 0, val_fraction: float = 0.2,
              test_fraction: float = 0.2) -> dict:
    """``n`` reviews, ``label_noise`` of their labels flipped, split into train / eval / test:
    the Trainer's data arguments (train_dataset, eval_dataset, compute_metrics) and the
    held-out test_dataset."""
    rng = random.Random(seed)
    texts, labels = zip(*(review(rng) for _ in range(n)))
    labels = [1 - y if rng.random() < label_noise else y for y in labels]
    tokenizer = WordTokenizer()
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    cut = (slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, n))
    test, val, train = (Reviews(list(texts[s]), list(labels[s]), tokenizer) for s in cut)
    return {"train_dataset": train, "eval_dataset": val, "test_dataset": test, "compute_metrics": compute_metrics}


def make_model(num_labels: int = 2, hidden_size: int = 32, num_layers: int = 2, heads: int = 2, seed: int = 0,
               lexicon: float = 1.0):
    """A small BERT classifier built from a config, standing in for a pretrained checkpoint: its
    weights come from ``seed`` (the same every call, as ``from_pretrained``'s are), and its word
    embeddings already set positive and negative words apart along one direction (``lexicon``:
    how far), as a pretrained model's do. The classification head is new."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=MAX_LENGTH, num_labels=num_labels, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
        direction = torch.randn(hidden_size)
    embeddings = model.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        for words, sign in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
            embeddings[[VOCAB.index(w) for w in words]] += sign * lexicon * direction
    return model


def make_gpt2(num_labels: int = 2, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, seed: int = 0,
              lexicon: float = 1.0):
    """A small GPT-2 classifier (decoder-only) built from a config, on the same words and
    reviews as :func:`make_model`, standing in for a pretrained checkpoint as it does (seeded;
    the word embeddings set positive and negative words apart).

    GPT2ForSequenceClassification classifies from the last token that is not ``pad_token_id``
    (the rightmost one, so either side of padding is found). The reviews are padded on the
    right, as :class:`WordTokenizer` pads them: that token is [SEP], which under the causal
    mask has seen the whole review, and the real tokens keep positions 0, 1, ... (left padding
    would shift them unless the positions were made from the mask). GPT-2's own tokenizer has
    no pad token (its recipes set ``pad_token = eos_token``); this vocabulary has [PAD], 0."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=len(VOCAB), n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_inner=2 * n_embd,
                        n_positions=MAX_LENGTH, num_labels=num_labels, pad_token_id=0, bos_token_id=2,
                        eos_token_id=3)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(config)
        direction = torch.randn(n_embd)
    embeddings = model.transformer.wte.weight
    with torch.no_grad():
        for words, sign in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
            embeddings[[VOCAB.index(w) for w in words]] += sign * lexicon * direction
    return model
