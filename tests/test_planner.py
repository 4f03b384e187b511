"""The memory planner (#24 item 7) against what torch really allocates on the CPU: the whole step, the drift loss's
temporaries, and the fake-tensor simulation against a real run of the same generator (fp32 and bf16 autocast)."""
import pytest
import torch

from drifting.features import feature_drift_loss
from drifting.generator import Generator, generator_config
from drifting.planner import LiveBytes, drift_standin, measure_step, plan
from drifting.train import train_config

TOL = 0.15  # the bound on predicted / measured - 1


@pytest.mark.parametrize(
    "preset,over,K,item",
    [
        ("tiny", dict(n_c=2), 5, (2, 8, 8)),
        ("tiny", dict(n_c=4, grad_accum=2), 5, (2, 16, 16)),  # gradients alive during the second micro-batch
        ("cpu", dict(n_c=2, n_pos=8, n_neg=8, n_unc=4), 10, (4, 8, 8)),  # a wider generator, the `small` MAE
    ],
)
def test_plan_matches_a_measured_cpu_step(preset, over, K, item):
    measured = measure_step(preset, K, item, **over)
    predicted = plan(train_config(preset, **over), num_classes=K, item_shape=item, device="cpu")["peak"]
    assert abs(predicted / measured - 1) <= TOL, (predicted, measured)


def test_more_labels_need_more_memory_and_the_planner_sees_it():
    "A plan that ignored the batch would pass the test above by luck at one size: here the size changes 4x."
    small, big = (plan("tiny", n_c=n, num_classes=5, item_shape=(2, 8, 8)) for n in (1, 4))
    assert big["terms"]["activations"] > 3 * small["terms"]["activations"]
    assert big["terms"]["draws"] == 4 * small["terms"]["draws"]


def test_drift_standin_matches_the_real_drift_loss():
    torch.manual_seed(0)
    shapes = dict(a=(64, 32), a_mean=(64, 32), b=(1, 256))
    feats = lambda n, grad=False: {k: torch.randn(4, n, L, D, requires_grad=grad) for k, (L, D) in shapes.items()}
    ins = [feats(16, True), feats(24), feats(8)]
    out = {}
    for name in ("real", "model"):
        lb = LiveBytes()
        with lb:
            loss = feature_drift_loss(*ins, w=torch.full((4,), 2.0))[0] if name == "real" else drift_standin(*ins, 3, lb)
            out[name] = (lb.top, lb.live)
        del loss
    for i in (0, 1):  # the call's peak, and what it keeps for backward
        assert abs(out["model"][i] / out["real"][i] - 1) <= TOL, out


@pytest.mark.parametrize("bf16", [False, True])
def test_fake_simulation_equals_a_real_run(bf16):
    "The planner's method: the same code on fake tensors allocates exactly what it allocates on real ones."
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = generator_config("tiny", check_inputs=False)
    peaks = []
    for fake in (False, True):
        with torch.device("meta"):
            gen = Generator(cfg)
        mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else torch.device("cpu")
        lb = LiveBytes()
        with mode, lb:
            gen = gen.to_empty(device="cpu")
            gen.reset_parameters()  # style offsets and RoPE tables: real values on the real run
            eps, lab, sty = torch.empty(16, 2, 8, 8), torch.zeros(16, dtype=torch.long), torch.zeros(16, 4, dtype=torch.long)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                x = gen(eps.normal_(), lab, 1.0, sty)
            x.square().mean().backward()
        peaks.append(lb.top)
    assert peaks[0] == peaks[1] > 0


def test_bad_input_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="precision must be one of"):
        plan("tiny", precision="fp16")
    with pytest.raises(ValueError, match="do not split"):
        plan("tiny", n_c=3, world_size=2)
    with pytest.raises(ValueError, match="world_size must be an int"):
        plan("tiny", world_size=0)
