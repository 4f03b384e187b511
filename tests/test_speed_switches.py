"""The precision and speed switches of `TrainConfig` (#27 item 2, #24 item 8): each one's training step against the
eager fp32 step of the same tiny trainer, within the tolerance that switch allows (D-speed-1, D-speed-2).

Threads are pinned to 1, so two eager runs of the same step are bit-identical here: every difference below comes from
the switch. Tolerances, from the arithmetic:
- u32 = 2^-24 (fp32 unit roundoff), u16 = 2^-8 (bf16: 8 significant bits).
- The loss is a sum over feature keys, each normalised to unit scale by the loss itself. Some keys are zero up to
  rounding by construction: the per-channel means of a map after GroupNorm (`layer1_mean`, `layer2_mean`, ...; their
  values here are ~1e-7, so every run's rounding is all there is to them). Their terms depend on the rounding alone,
  so any change of kernels (a compiler's order of sums, bf16) changes them by O(1) of their share of the loss, while
  the gradient that trains the generator hardly moves. So the loss is compared loosely and the gradient tightly.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_trainer import tiny_trainer  # noqa: E402

from drifting.runs import check_train_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
U32 = 2.0**-24


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _flat(tr, grad=False):
    return torch.cat([(p.grad if grad else p.detach()).flatten() for p in tr.gen.parameters()])


def _eager_step(**kw):
    tr = tiny_trainer(**kw)
    return tr, tr.step()


def test_switches_are_recorded_and_checked():
    tr = tiny_trainer(tf32=True, fused_adamw=True)
    sd = tr.state_dict()["config"]  # what the checkpoint and the bundle record
    assert (sd["tf32"], sd["fused_adamw"], sd["compile"], sd["bf16"]) == (True, True, False, None)
    assert tr.speed == dict(bf16=False, compile=False, fused_adamw=True, tf32=False)  # TF32: a no-op on the CPU
    cfg, _ = check_train_run(preset="tiny", bf16=True, compile=None, fused_adamw=True)  # run_latent's -p values
    assert (cfg.bf16, cfg.compile, cfg.fused_adamw, cfg.tf32) == (True, False, True, False)  # None: the preset's
    with pytest.raises(ValueError, match="compile must be True or False"):
        check_train_run(compile="True")  # `-r compile True` gives a string
    with pytest.raises(ValueError, match="bf16 must be None"):
        check_train_run(bf16="yes")


def test_tf32_is_a_no_op_on_the_cpu():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    (a, ma), (b, mb) = _eager_step(), _eager_step(tf32=True)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags  # CUDA flags untouched
    assert ma["loss"] == mb["loss"] and torch.equal(_flat(a), _flat(b))  # same kernels: the same bits


def test_fused_adamw_equals_the_loop_within_rounding():
    """Same weights, so the same forward and gradients (bit-equal); only the AdamW update differs: the fused kernel
    computes p·(1 − lr·wd) − lr·m̂/(√v̂ + ε) with the same ~6 rounded fp32 operations in another order, each off by
    ≤ u32 relative, so |Δp| ≤ 8·u32·(|p| + lr·|m̂/(√v̂+ε)|), and |m̂/(√v̂+ε)| ≤ 1 at the first step. warmup=0 gives
    the full lr (1e-3), so the update is not lost below the weights' rounding."""
    (a, ma), (b, mb) = _eager_step(warmup=0), _eager_step(warmup=0, fused_adamw=True)
    assert b.opt.param_groups[0]["fused"] is True
    assert ma["loss"] == mb["loss"] and torch.equal(_flat(a, grad=True), _flat(b, grad=True))
    pa, pb, p0 = _flat(a), _flat(b), _flat(tiny_trainer(warmup=0))
    assert (pa - p0).abs().max() > 1e-4  # the step moved the weights
    tol = 8 * U32 * (pa.abs() + ma["lr"])
    assert ((pa - pb).abs() <= tol).all(), ((pa - pb).abs() / tol).max()


def test_bf16_runs_the_autocast_path_on_the_cpu():
    """`bf16=True` on the CPU: the networks' matrix products run in bf16, the features leave in fp32, the drift loss
    and the step stay finite. bf16 keeps 8 significant bits (u16 = 2^-8): the encoder's features of the same input
    differ from fp32 by 0.1-70 u16 in norm per key (up to ~0.27 relative in the deepest, 1×1 maps), and the keys that
    are rounding noise (module docstring) change by O(1). The bound is half the loss: loose, a guard against a broken
    path (NaN, fp16 overflow, the wrong dtype into the drift loss), not a measure of tracking, which
    bench/bf16_cpu.py measures over 200 steps (D-speed-2). Measured here 0.11 (0.20 with gpu_check's tiny trainer).
    The gap must also be non-zero: zero would mean autocast never ran."""
    (a, ma), (b, mb) = _eager_step(), _eager_step(bf16=True)
    assert b.speed["bf16"] and not a.speed["bf16"]  # the default on the CPU stays fp32
    seen = []
    lin = next(m for m in b.gen.modules() if isinstance(m, torch.nn.Linear))
    h = lin.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    eps = torch.randn(4, 2, 8, 8)
    with b._autocast():
        x = b.gen_fn(eps, torch.arange(4) % 5, torch.ones(4))
        feats = b.features_fn(x)
    h.remove()
    assert torch.bfloat16 in seen and x.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in feats.values())  # the drift loss gets fp32 features
    assert math.isfinite(mb["loss"]) and math.isfinite(mb["grad_norm"])
    assert torch.isfinite(_flat(b)).all()
    gap = abs(mb["loss"] - ma["loss"]) / abs(ma["loss"])
    assert 0 < gap < 0.5, gap


@pytest.mark.slow  # torch.compile (inductor, gcc) of the tiny generator and feature net: ~2-3 min on 2 busy cores
def test_compiled_step_equals_eager_within_rounding():
    """Inductor fuses and reorders the fp32 reductions of the generator and the encoder, so features differ by a few
    u32 relative where they are not zero by construction. The gradient: within 1e-4 relative in norm (measured 1e-7:
    a few u32 through the kernel's 1/τ_min = 50 amplification, with room for another CPU's vector width). The loss:
    within 1e-3 relative (measured 2.2e-4), set by the noise keys (module docstring), not by the gradient's path.
    AdamW's first step is lr·g/(|g| + ε) ≈ lr·sign(g), so the weights differ by ≤ 2·lr (where g is ~0 and its sign
    flips) and by a few u32·|p| elsewhere. Compile time: 356 s here on 2 cores at load 13 (another session's jobs)."""
    (a, ma), (b, mb) = _eager_step(warmup=0), _eager_step(warmup=0, compile=True)
    assert b.speed["compile"] and b.gen_fn is not b.gen
    assert set(b.state_dict()["model"]) == set(a.state_dict()["model"])  # checkpoints do not see the wrapper
    assert abs(mb["loss"] - ma["loss"]) <= 1e-3 * abs(ma["loss"]), (ma["loss"], mb["loss"])
    ga, gb = _flat(a, grad=True), _flat(b, grad=True)
    assert ((ga - gb).norm() / ga.norm()) < 1e-4
    pa, pb = _flat(a), _flat(b)
    assert ((pa - pb).abs() <= 2 * ma["lr"] + 8 * U32 * pa.abs()).all()


def test_gpu_bench_runs_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--cpu", "--preset", "tiny", "--quick", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())["rows"]
    names = {row["section"] for row in rows}
    assert {"step", "drift", "bf16", "resume"} <= names, names
    assert all(row["ok"] for row in rows if "ok" in row), [row for row in rows if not row.get("ok", True)]
