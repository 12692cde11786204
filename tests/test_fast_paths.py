"""The inference fast paths compute the reference function: the prepared decoder (both schedules),
the sub-pixel upsampling convs, the channels-last encoder, chunking, and reduced precision."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import agetool.device as device_mod
from agetool.device import cpu_has_native_bf16, pick_dtype
from agetool.device import physical_cores
from agetool.engine import AgingEngine
from agetool.nn.generator import Generator
from agetool.nn.prepared import PreparedDecoder, subpixel_kernels
from tests.seeding import seeded_state_dict
from agetool.engine import default_chunk

ATOL = 1e-4
MIN_PSNR = 40.0
CPU = torch.device("cpu")
DEPLOY_CASES = ["gen_case0_deploy_traverse_64", "gen_case1_noisycond_64", "gen_case3_deploy_256"]
needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16")


@pytest.fixture(scope="module")
def generator():
    g = Generator().eval()
    g.load_state_dict(seeded_state_dict(g, 1, "generator"), strict=True)
    return g


def psnr(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak-to-peak 2, as 255 for uint8)."""
    mse = float(((a.double() - torch.as_tensor(b).double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def max_err(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(b)).abs().max())


def grouped_decode(g: Generator, feats: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    g.set_grouped_modconv(True)
    try:
        with torch.inference_mode():
            return g.decode(feats.expand(w.shape[0], -1, -1, -1), w)
    finally:
        g.set_grouped_modconv(False)


def test_subpixel_kernels_equal_upsample_pad_conv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    want = F.conv2d(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect"), w)
    z = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), subpixel_kernels(w).reshape(16, 5, 2, 2))
    got = torch.empty_like(want)
    for a in range(2):
        for b in range(2):
            p = 2 * a + b
            got[:, :, a::2, b::2] = z[:, 4 * p:4 * p + 4, a:a + 7, b:b + 6]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("case", DEPLOY_CASES)
def test_prepared_decoder_equals_grouped_reference(generator, load_npz, case, per_sample):
    z = load_npz(f"{case}.npz")
    with torch.inference_mode():
        feats = generator.encode(torch.from_numpy(z["x"]))
        w = generator.latent(torch.from_numpy(z["cond"]))
    want = grouped_decode(generator, feats, w)
    got = PreparedDecoder(generator.decoder, CPU, per_sample=per_sample)(feats, w)
    assert max_err(got, want) <= ATOL
    assert max_err(got, z["out_deploy"]) <= ATOL


@pytest.mark.parametrize("per_sample", [True, False])
def test_prepared_decoder_one_feature_map_per_frame(generator, load_npz, per_sample):
    z = load_npz("gen_case2_batch_nondeploy_64.npz")
    with torch.inference_mode():
        feats = generator.encode(torch.from_numpy(z["x"]))
        w = generator.latent(torch.from_numpy(z["cond"]))
    got = PreparedDecoder(generator.decoder, CPU, per_sample=per_sample)(feats, w)
    assert max_err(got, z["out"]) <= ATOL


def test_engine_chunks_do_not_change_frames(generator, load_npz):
    z = load_npz("gen_case0_deploy_traverse_64.npz")
    lat = torch.from_numpy(z["latents_traverse_main"])
    outs = []
    for chunk in (1, 4, len(lat)):
        engine = AgingEngine(generator, CPU, chunk=chunk)
        feats = engine.encode(torch.from_numpy(z["x"]))
        outs.append(torch.cat(list(engine.decode_stream(feats[0], lat))))
    assert max_err(outs[0], z["out_traverse_main"]) <= ATOL
    for other in outs[1:]:
        assert max_err(other, outs[0]) <= 1e-5


def test_channels_last_encode_matches_fixture(generator, load_npz):
    z = load_npz("gen_case3_deploy_256.npz")
    feats = AgingEngine(generator, CPU).encode(torch.from_numpy(z["x"]))
    assert feats.is_contiguous()
    assert max_err(feats, z["id_features"]) <= ATOL


@needs_bf16
@pytest.mark.parametrize("case", DEPLOY_CASES)
def test_bfloat16_close_to_float32(generator, load_npz, case):
    z = load_npz(f"{case}.npz")
    engine = AgingEngine(generator, CPU, dtype=torch.bfloat16, chunk=6)
    feats = engine.encode(torch.from_numpy(z["x"]))
    out = engine.decode(feats[0], engine.latents(torch.from_numpy(z["cond"])))
    assert out.dtype == torch.float32
    assert psnr(out, z["out_deploy"]) >= MIN_PSNR


@needs_bf16
@pytest.mark.parametrize("per_sample", [True, False])
def test_bfloat16_schedules_close_to_float32(generator, load_npz, per_sample):
    z = load_npz("gen_case2_batch_nondeploy_64.npz")
    feats = torch.from_numpy(z["id_features"])
    w = torch.from_numpy(z["latents"])
    out = PreparedDecoder(generator.decoder, CPU, torch.bfloat16, per_sample=per_sample)(feats, w)
    assert psnr(out, z["out"]) >= MIN_PSNR


def test_auto_dtype_follows_native_bf16(monkeypatch):


    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda native=native: native)
        assert pick_dtype("auto", CPU) == want
    assert pick_dtype("float32", CPU) == torch.float32


def test_default_chunk_is_bounded_and_shrinks_with_frame_size():
    small, large = default_chunk(CPU, torch.float32, 64), default_chunk(CPU, torch.float32, 4096)
    assert 1 <= large <= small <= 16
    assert default_chunk(CPU, torch.bfloat16) >= 1


def test_physical_cores_counts_each_core_once():
    """Against the kernel's own numbering: one core per (package, core id) of the CPUs this process may use."""
    from pathlib import Path

    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        if not (topology / "core_id").is_file():
            pytest.skip("no CPU topology in /sys")
        cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
    assert physical_cores() == len(cores)


def test_frame_pool_keeps_order_and_stops_early():
    import threading

    from agetool.engine import FramePool

    before = torch.get_num_threads()
    pool = FramePool(2)
    assert torch.get_num_threads() == before  # the workers' single thread does not leak out
    together = threading.Barrier(2, timeout=60)  # both workers at once, whatever the machine's load

    def threads(i):
        together.wait()
        return threading.current_thread().name, torch.get_num_threads()

    seen = list(pool.imap(threads, range(4), ahead=4))
    assert len({name for name, _ in seen}) == 2  # two workers ...
    assert {n for _, n in seen} == {1}  # ... each computing with one intra-op thread (not the process's setting)
    assert torch.get_num_threads() == before
    done = [threading.Event() for _ in range(13)]

    def late(i):  # each even item ends after the odd one behind it: results come back out of order
        if i % 2 == 0:
            done[i + 1].wait(60)
        done[i].set()
        return i

    assert list(pool.imap(late, range(12), ahead=4)) == list(range(12))
    gate, started = threading.Event(), []

    def held(i):
        started.append(i)
        if i:
            gate.wait(60)
        return i

    it = pool.imap(held, range(100), ahead=3)
    assert next(it) == 0
    it.close()  # items 1 and 2 are queued or running; nothing more is submitted
    gate.set()
    drained = threading.Barrier(2, timeout=60)
    for waiter in [pool._pool.submit(drained.wait) for _ in range(2)]:  # both workers past what came before
        waiter.result()
    assert set(started) <= {0, 1, 2}


def test_engine_stream_equals_direct_decode(generator, load_npz):
    z = load_npz("gen_case1_noisycond_64.npz")
    engine = AgingEngine(generator, CPU, chunk=3)
    feats = engine.encode(torch.from_numpy(z["x"]))
    w = engine.latents(torch.from_numpy(z["cond"]))
    chunks = list(engine.decode_stream(feats[0], w))
    assert [len(c) for c in chunks] == [3, 3]
    direct = PreparedDecoder(generator.decoder, CPU)(feats, w)
    assert max_err(torch.cat(chunks), direct) <= 1e-5
