"""A tiny deterministic trainer shared by the resume tests (random 2×8×8 'latents', 5 classes, a random tiny encoder).
The encoder is an export folder named by the config (`feature_encoder`), so the trainer is built as a run builds its
own (`build_features`, `data_stream`) and a distributed job can rebuild it from the config alone."""
import os
import tempfile
from pathlib import Path

import torch

from drifting.core import atomic_folder, module_sha256
from drifting.data import ImageDataset
from drifting.feature_nets import build_features
from drifting.mae import ResNetEncoder, save_encoder
from drifting.streams import data_stream
from drifting.train import Trainer, train_config


def tiny_encoder() -> str:
    "The random tiny encoder (seed 7), exported once per content into the temp folder (the same path in every process)."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        enc = ResNetEncoder(in_channels=2, width=8, blocks=(1, 1, 1, 1))
    d = Path(tempfile.gettempdir()) / f"drifting-tests-{os.getuid()}" / f"tiny-encoder-{module_sha256(enc)[:16]}"
    if not (d / "config.json").exists():
        with atomic_folder(d, "config.json") as tmp:  # concurrent writers: the first complete folder wins
            save_encoder(enc, tmp)
    return str(d)


def tiny_data() -> ImageDataset:
    g = torch.Generator().manual_seed(123)
    return ImageDataset(torch.randn(200, 2, 8, 8, generator=g), torch.arange(200) % 5, list("abcde"), "rand", "fp-rand",
                        kind="latents")


def tiny_trainer(**overrides) -> Trainer:
    ds = tiny_data()
    cfg = train_config("tiny", **dict(dict(feature_encoder=tiny_encoder(), every_k_block=1), **overrides))
    return Trainer(cfg, data_stream(cfg, ds), build_features(cfg, ds, "cpu", progress=False)[0], "cpu")
