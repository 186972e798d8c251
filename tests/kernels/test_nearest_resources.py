"""The nearest kernel's launch planning, checked without a GPU: the shared-memory model,
the prune and its fallback, the codebook split and the autotune key.

The model itself is checked against ptxas by the compile gate (tests/bench/test_compile_check.py).
"""

import pytest

pytest.importorskip("triton")

from lgvq.kernels import nearest  # noqa: E402

#: (element size, input_precision the launcher passes) for bf16/fp16, fp32 TF32, fp32 3xTF32.
DOT_KINDS = [(2, "ieee"), (4, "tf32"), (4, "tf32x3")]
GPU_CONFIGS = [nearest._config(t) for t in dict.fromkeys(nearest.GPU_TILES + nearest.TF32X3_TILES
                                                          + nearest.TF32X3_MMA_SYNC_TILES)]


def kept(d, elem, precision, arch=90):
    width = nearest.padded_d(d)
    return nearest.launchable_configs(GPU_CONFIGS, width, elem, precision, nearest.SHARED_MEMORY_LIMIT[arch], arch)


def model(config, d, elem, precision):
    width = nearest.padded_d(d)
    block_d, single_d = nearest.block_d_for(width, elem)
    return nearest.shared_memory_bytes(config, block_d, single_d, elem, precision)


@pytest.mark.parametrize("arch", sorted(nearest.SHARED_MEMORY_LIMIT))
@pytest.mark.parametrize("elem,precision", DOT_KINDS)
def test_every_d_up_to_4096_has_a_config_that_fits(arch, elem, precision):
    limit = nearest.SHARED_MEMORY_LIMIT[arch]
    for d in range(1, 4097):
        configs = kept(d, elem, precision, arch)
        assert configs, d
        assert all(model(c, d, elem, precision) <= limit for c in configs), (d, configs)


def test_fallback_is_the_smallest_tile_not_the_last_listed():
    fallback = nearest._config(nearest.FALLBACK)
    for elem, precision in DOT_KINDS:
        for d in (1, 64, 256, 300, 4096):
            assert model(fallback, d, elem, precision) <= min(model(c, d, elem, precision) for c in GPU_CONFIGS)
    # A limit nothing listed fits: the fallback, not configs[-1] (which would need more).
    tiny = nearest.launchable_configs(GPU_CONFIGS, 256, 4, "tf32", limit=40 * 1024, arch=90)
    assert [nearest._tile(c) for c in tiny] == [nearest.FALLBACK]


@pytest.mark.parametrize("elem,precision", DOT_KINDS)
def test_paper_shape_d256_keeps_wgmma_sized_configs_on_hopper(elem, precision):
    """d = 256 (the paper's codes): the old 200 KB rule kept nothing here and launched a
    417 KB (fp32) or 209 KB 32×128 (bf16) fallback."""
    configs = kept(256, elem, precision)
    assert nearest._config(nearest.FALLBACK) not in configs
    wgmma_shaped = [c for c in configs if c.kwargs["BLOCK_N"] >= 64 and 4 <= c.num_warps <= 8]
    assert len(wgmma_shaped) >= 2


def test_model_counts_the_x_tile_once_and_code_tiles_per_stage():
    cfg = nearest._config((64, 128, 4, 3, 0, 0))
    # bf16 d=256, x held whole: 64·256·2 once + 3 · 128·256·2, plus 64 rows · 4 warps · 8 B.
    assert nearest.shared_memory_bytes(cfg, 256, True, 2, "ieee") == 32768 + 3 * 65536 + 2048
    # tiled: both tiles per stage
    assert nearest.shared_memory_bytes(cfg, 64, False, 2, "ieee") == 3 * (8192 + 16384) + 2048


def test_rows_are_padded_to_16_and_wide_rows_are_tiled():
    assert [nearest.padded_d(d) for d in (1, 16, 17, 300)] == [16, 16, 32, 304]
    assert nearest.block_d_for(256, 2) == (256, True)
    assert nearest.block_d_for(256, 4) == (nearest.TILED_BLOCK_D, False)
    assert nearest.block_d_for(128, 4) == (128, True)
    assert nearest.block_d_for(304, 2) == (nearest.TILED_BLOCK_D, False)


def test_codebook_splits_follow_the_chosen_block_n():
    sms = 132
    n = 64 * sms  # one wave of 64-row blocks
    assert nearest.auto_splits(n, 16384, block_n=64, block_k=128, sms=sms) == 2
    assert nearest.auto_splits(n, 16384, block_n=128, block_k=128, sms=sms) == 4
    assert nearest.auto_splits(4 * n, 16384, block_n=64, block_k=128, sms=sms) == 1
    # never more splits than two code tiles each
    assert nearest.auto_splits(1, 512, block_n=64, block_k=128, sms=sms) == 2


def test_autotune_key_buckets_n():
    assert nearest.n_bucket(1) == nearest.n_bucket(1000) == 1024
    assert nearest.n_bucket(65536) == 65536 != nearest.n_bucket(4096)
    assert nearest.n_bucket(10**9) == 2**20
    assert "N_BUCKET" in nearest._nearest_kernel.keys


def test_3xtf32_before_hopper_uses_tiles_with_16_accumulators_per_thread():
    """mma.sync keeps the hi/lo operand fragments in registers: 32 accumulators per thread
    (and 64-wide code tiles) reach 255 registers and spill on sm_80 (ptxas), 32-wide code tiles
    do not; Hopper keeps its larger tiles."""
    for d in (8, 64, 256, 1024):
        for config in kept(d, 4, "tf32x3", arch=80):
            per_thread = config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"] // (32 * config.num_warps)
            assert per_thread <= 16 and config.kwargs["BLOCK_K"] <= 32, (d, nearest._tile(config))
    assert any(c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] // (32 * c.num_warps) == 32 for c in kept(64, 4, "tf32x3"))


def test_new_candidates_are_offered_beside_the_baseline():
    """Every short-epilogue or prefetch tile has a baseline twin of the same BLOCK_N × BLOCK_K
    (plain epilogue, pipelined schedule) listed too: nothing the autotuner could pick before
    is gone; the new ones are there."""
    for tiles in (nearest.GPU_TILES, nearest.TF32X3_TILES):
        baseline = {tile[:2] for tile in tiles if tile[4:] == (0, 0)}
        for tile in tiles:
            assert tile[:2] in baseline, tile
        assert any(tile[4] for tile in tiles)
    assert any(tile[5] == 1 for tile in nearest.GPU_TILES)
    assert any(tile[3] >= 4 and tile[:2] == (128, 64) for tile in nearest.GPU_TILES)


@pytest.mark.parametrize("d,elem,precision", [(256, 2, "ieee"), (128, 4, "tf32"), (304, 2, "ieee"), (1024, 4, "tf32")])
def test_prefetch_is_kept_for_resident_rows_only(d, elem, precision):
    """The prefetch schedule is a variant of the resident-row loop; the tiled d loop ignores
    it, so offering it there would only compile a duplicate of the pipelined config."""
    _, single_d = nearest.block_d_for(d, elem)
    schedules = {c.kwargs["SCHEDULE"] for c in kept(d, elem, precision)}
    assert schedules == ({0, 1} if single_d else {0})


def test_prefetch_model_counts_one_code_buffer():
    """bf16 d = 256, 128×128 prefetch: x and one code tile (64 KiB each), not two code tiles."""
    cfg = nearest._config((128, 128, 8, 1, 1, 1))
    assert nearest.shared_memory_bytes(cfg, 256, True, 2, "ieee") == 2 * 65536 + 128 * 8 * 8
