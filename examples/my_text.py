"""A text classifier of one's own: a loader for a file of (text, label) rows in `data_dir` (JSON
Lines `{"text": ..., "label": ...}` or CSV with columns `text,label`) and a small
`nn.TransformerEncoder` classifier on its token ids.

Config (the loader's and the model's `vocab_size` must be equal):

    datasets:
      reviews: {loader: "examples/my_text.py:load_text", file: reviews.jsonl, vocab_size: 64}
    models:
      textnet: {factory: "examples/my_text.py:build", options: {vocab_size: 64}}

Tokens are lower-cased words (`\\w+`). The vocabulary comes from the training split only: id 0
pads, id 1 stands for every word outside the vocabulary (all of the test set's unseen words), ids
2 … vocab_size − 1 the most frequent training words (ties by the word). Every text is cut or padded
to `max_length` ids; the model ignores the padding (a key padding mask, a masked mean)."""

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fragility.data.split import Split, stratified_split

PAD, UNKNOWN = 0, 1
WORD = re.compile(r"\w+")


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of a .jsonl/.json-lines or .csv file; labels as strings."""
    rows = []
    if path.suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record or "label" not in record:
                raise ValueError(f"{path}, line {number}: expected an object with keys 'text' and 'label'")
            rows.append((str(record["text"]), str(record["label"])))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a header with columns 'text' and 'label', got {reader.fieldnames}")
            rows = [(row["text"], row["label"]) for row in reader]
    else:
        raise ValueError(f"{path}: expected a .jsonl or .csv file")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def vocabulary(texts, vocab_size: int) -> dict[str, int]:
    """word → id for the vocab_size − 2 most frequent words of `texts` (ties: alphabetical)."""
    counts = Counter(word for text in texts for word in WORD.findall(text.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    return {word: i + 2 for i, word in enumerate(words)}


def encode(texts, vocab: dict[str, int], max_length: int) -> torch.Tensor:
    """Token ids [n, max_length] (int64): known words, UNKNOWN for the others, PAD after the end."""
    ids = torch.full((len(texts), max_length), PAD, dtype=torch.int64)
    for row, text in enumerate(texts):
        words = [vocab.get(word, UNKNOWN) for word in WORD.findall(text.lower())][:max_length]
        ids[row, : len(words)] = torch.tensor(words, dtype=torch.int64)
    return ids


def load_text(data_dir="data", file="text.jsonl", test_fraction=0.25, split_seed=0, vocab_size=64, max_length=16):
    """The (text, label) rows of `data_dir/file`, a stratified seeded split, token ids from a
    vocabulary of the training texts; labels numbered in sorted order of their names."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3 (padding, unknown and one word), got {vocab_size}")
    path = Path(data_dir) / file
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the loader's `file`, relative to data_dir)")
    texts, names = zip(*read_rows(path))
    classes = sorted(set(names))
    labels = np.array([classes.index(name) for name in names], dtype=np.int64)
    train, test = stratified_split(labels, test_fraction, split_seed)
    vocab = vocabulary([texts[i] for i in train], vocab_size)
    encoded = encode(texts, vocab, max_length)
    return Split(encoded[train], torch.tensor(labels[train]), encoded[test], torch.tensor(labels[test]),
                 n_classes=len(classes),
                 meta={"source": str(path), "split_seed": split_seed, "classes": classes, "vocab_size": vocab_size,
                       "words_in_vocabulary": len(vocab), "max_length": max_length, "pad": PAD, "unknown": UNKNOWN})


class TextTransformer(nn.Module):
    """ids [n, L] → embeddings + learned positions → TransformerEncoder with the padding masked
    out of attention → mean over the non-padding positions → Linear → class scores [n, C]."""

    def __init__(self, length, n_classes, vocab_size=64, dim=8, heads=2, layers=1, feedforward=16, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.position = nn.Parameter(0.1 * torch.randn(length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=feedforward, dropout=dropout, batch_first=True)
        # no nested tensors: their fast path cannot be differentiated by torch.func
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, n_classes)

    def forward(self, tokens):
        # padding positions are masked; the first position never is (an empty text is then one
        # padding token, not a row whose attention weights are all masked, which gives NaN)
        padding = torch.cat([torch.zeros_like(tokens[:, :1], dtype=torch.bool), tokens[:, 1:] == PAD], dim=1)
        h = self.encoder(self.embed(tokens) + self.position, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return self.out((h * keep).sum(1) / keep.sum(1).clamp(min=1))


def build(input_shape, n_classes, vocab_size=64, dim=8, heads=2, layers=1, feedforward=16, dropout=0.0):
    """The classifier for ids of shape [max_length] (`input_shape`) and `vocab_size` ids."""
    if len(input_shape) != 1:
        raise ValueError(f"expected token ids of shape [max_length], got inputs of shape {tuple(input_shape)}")
    return TextTransformer(input_shape[0], n_classes, vocab_size, dim, heads, layers, feedforward, dropout)
