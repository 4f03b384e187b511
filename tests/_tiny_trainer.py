"A tiny deterministic trainer shared by the resume tests (random 2×8×8 'latents', 5 classes, a random tiny encoder)."
import torch

from drifting.data import ImageDataset
from drifting.mae import ResNetEncoder
from drifting.features import FeatureSpace
from drifting.train import DataStream, Trainer, train_config


def tiny_trainer(**overrides) -> Trainer:
    g = torch.Generator().manual_seed(123)
    ds = ImageDataset(torch.randn(200, 2, 8, 8, generator=g), torch.arange(200) % 5, list("abcde"), "rand", "fp-rand")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        enc = ResNetEncoder(in_channels=2, width=8, blocks=(1, 1, 1, 1))
    cfg = train_config("tiny", **overrides)
    return Trainer(cfg, DataStream(ds, cfg.push_per_step, cfg.seed), FeatureSpace(enc, every_k_block=1), "cpu")
