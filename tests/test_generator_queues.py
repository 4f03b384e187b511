"""Generator and queues through a real checkpoint file: a resumed run continues exactly where the first one stopped."""
import dataclasses

import torch

from drifting.core import atomic_torch_save, seed_everything
from drifting.generator import Generator, GeneratorConfig, build_generator
from drifting.queues import SampleQueues, sample_alpha
from drifting.train import TRAIN_PRESETS


def _step(g, opt, q, cfg, gen):
    "One miniature training step: draw α, positives and noise from the state, move the generator towards positives."
    labels = torch.tensor([0, 3])
    alpha = sample_alpha(2, cfg.cfg_k, cfg.no_cfg_frac, cfg.alpha_max, generator=gen)
    pos, _ = q.sample_pos(labels, 4, gen)  # [2, 4, 4, 8, 8]
    eps = torch.randn(2, 4, 4, 8, 8, generator=gen)
    x = g(eps.flatten(0, 1), labels.repeat_interleave(4), alpha.repeat_interleave(4), generator=gen)
    loss = ((x - pos.flatten(0, 1)) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    q.push(torch.randn(6, 4, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen))
    return loss.item()


def test_checkpoint_resume_is_exact(tmp_path):
    seed_everything(0)
    cfg = TRAIN_PRESETS["ablation"]
    g = build_generator("cpu-latent", depth=1, hidden_size=32, num_heads=2)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    q = SampleQueues(10, (4, 8, 8), per_class=8, uncond=16)
    q.push(torch.randn(40, 4, 8, 8), torch.arange(40) % 10)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3): _step(g, opt, q, cfg, gen)
    path = atomic_torch_save(dict(config=dataclasses.asdict(g.cfg), model=g.state_dict(), opt=opt.state_dict(),
                                  queues=q.state_dict(), rng=gen.get_state()), tmp_path / "ckpt.pt")
    ref = [_step(g, opt, q, cfg, gen) for _ in range(3)]  # the uninterrupted run

    ck = torch.load(path, weights_only=True)
    g2 = Generator(GeneratorConfig(**ck["config"])); g2.load_state_dict(ck["model"])
    opt2 = torch.optim.Adam(g2.parameters(), lr=1e-3); opt2.load_state_dict(ck["opt"])
    q2 = SampleQueues(10, (4, 8, 8), per_class=8, uncond=16); q2.load_state_dict(ck["queues"])
    gen2 = torch.Generator(); gen2.set_state(ck["rng"])
    assert [_step(g2, opt2, q2, cfg, gen2) for _ in range(3)] == ref
    for k, v in q.state_dict().items(): assert torch.equal(q2.state_dict()[k], v)
