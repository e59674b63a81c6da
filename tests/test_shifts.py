"""Distribution shifts: blur and jigsaw."""

import pytest
import torch

from iavutils.world.shifts import blur_sigma, gaussian_blur, jigsaw


def _tiles(x, g):
    b, c, h, w = x.shape
    return x.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, h // g, w // g)


def test_blur_zero_is_identity():
    x = torch.rand(2, 3, 32, 32)
    out = gaussian_blur(x, 0)
    assert torch.equal(out, x) and out is not x


def test_blur_grows_with_degree_and_keeps_constants():
    x = torch.rand(2, 3, 32, 32)
    const = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)
    # total variation falls as the degree grows
    tv = [(gaussian_blur(x, d).diff(dim=-1).abs().mean()).item() for d in (0, 0.5, 1, 2)]
    assert tv == sorted(tv, reverse=True)
    # mean preserved (kernel sums to one, reflection padding)
    assert torch.allclose(gaussian_blur(x, 1.0).mean(), x.mean(), atol=2e-3)
    # commutes with the model normalisation (affine per channel)
    m, s = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(gaussian_blur((x - m) / s, 1.5), (gaussian_blur(x, 1.5) - m) / s, atol=1e-5)
    # degree is resolution-independent: sigma scales with the image size
    assert blur_sigma(1.0, 224) == 7.0 and blur_sigma(1.0, 32) == 1.0
    with pytest.raises(ValueError):
        gaussian_blur(x, -1)


@pytest.mark.parametrize("grid", [2, 8])
def test_jigsaw_zero_swaps_is_identity(grid):
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(jigsaw(x, grid, 0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("grid,swaps", [(2, 1), (2, 2), (8, 1), (8, 5), (8, 32)])
def test_jigsaw_disjoint_moves_exactly_the_expected_tiles(grid, swaps):
    # distinct tiles: every tile is filled with its own index
    b, n = 3, grid * grid
    x = torch.arange(n, dtype=torch.float32).view(1, 1, grid, grid).repeat_interleave(32 // grid, 2).repeat_interleave(32 // grid, 3)
    x = x.expand(b, 3, 32, 32).contiguous()
    out, perm = jigsaw(x, grid, swaps, torch.Generator().manual_seed(1), disjoint=True, return_permutation=True)
    tiles_in, tiles_out = _tiles(x, grid), _tiles(out, grid)
    for i in range(b):
        moved = (perm[i] != torch.arange(n)).sum().item()
        assert moved == 2 * swaps
        assert torch.equal(tiles_out[i], tiles_in[i, perm[i]])
        assert (perm[i][perm[i]] == torch.arange(n)).all()  # a product of disjoint transpositions
        assert sorted(perm[i].tolist()) == list(range(n))
    # the pixel content is unchanged up to the tile order
    assert torch.equal(out.sum(dim=(2, 3)), x.sum(dim=(2, 3)))


def test_jigsaw_sequential_swaps_and_determinism():
    x = torch.rand(4, 3, 32, 32)
    a, pa = jigsaw(x, 8, 7, torch.Generator().manual_seed(3), return_permutation=True)
    b, pb = jigsaw(x, 8, 7, torch.Generator().manual_seed(3), return_permutation=True)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    c = jigsaw(x, 8, 7, torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    for i in range(4):
        moved = (pa[i] != torch.arange(64)).sum().item()
        assert 2 <= moved <= 14  # at most 2 per swap, at least one transposition survives (odd count)
        assert torch.equal(_tiles(a, 8)[i], _tiles(x, 8)[i, pa[i]])
        # parity of a product of 7 transpositions is odd
        p, seen, cycles = pa[i].tolist(), set(), 0
        for s in range(64):
            if s not in seen:
                cycles += 1
                while s not in seen:
                    seen.add(s)
                    s = p[s]
        assert (64 - cycles) % 2 == 1


def test_jigsaw_patch_grid_of_a_224_model():
    x = torch.rand(1, 3, 224, 224)
    out = jigsaw(x, 14, 10, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(ValueError):
        jigsaw(torch.rand(1, 3, 30, 30), 8, 1)
    with pytest.raises(ValueError):
        jigsaw(x, 2, 3, disjoint=True)
