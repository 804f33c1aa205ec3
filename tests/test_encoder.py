"""The encoder computed in pieces (LR feature tiles with their receptive field, HR blocks with a
one-pixel halo) against one pass over the whole image; small pieces so that many meet."""

import numpy as np
import pytest
import torch

from idm_rt.model.encoder import EDSREncoder
from idm_rt.model.pieces import features_in_tiles, in_blocks, receptive_radius
from idm_rt.model.tables import resize_tables


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {up: EDSREncoder(blocks=3, feats=8, upsampler=up).eval() for up in ("nearest", "implicit")}


def test_feature_tiles_with_the_receptive_field_around_them_are_one_pass(encoders):
    enc = encoders["implicit"]
    lr = torch.rand(2, 3, 75, 61) * 2 - 1
    radius = receptive_radius(len(enc.blocks))
    assert radius == 8  # head, 2 per block, body: 8 convolutions of 3x3
    with torch.no_grad():
        whole = enc.features(lr)
        tiled = features_in_tiles(enc.features, lr, radius, size=16)
        short = features_in_tiles(enc.features, lr, radius - 1, size=16)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-5
    assert (short - whole).abs().max() > 1e-4  # one pixel less and the tiles' zero padding shows


@pytest.mark.parametrize("upsampler", ["nearest", "implicit"])
@pytest.mark.parametrize("lr_size, size", [((20, 17), (70, 45)), ((9, 30), (41, 97)), ((5, 4), (40, 33))])
def test_hr_blocks_with_a_one_pixel_halo_are_one_pass(encoders, upsampler, lr_size, size):
    """Blocks of 16 HR pixels (remainders, several per LR pixel at 8x), each given only the features it reads
    and the whole image's cell size: the block computed once over the whole image."""
    enc = encoders[upsampler]
    feat = torch.randn(1, 8, *lr_size)
    tables = resize_tables(upsampler, lr_size, size)
    cell = torch.tensor([lr_size[0] / size[0], lr_size[1] / size[1]])
    seen = []

    def block(part, rows, cols, *extra):
        seen.append((part.shape[-2], part.shape[-1], len(rows), len(cols)))
        assert int(rows.max()) < part.shape[-2] and int(cols.max()) < part.shape[-1]
        return enc.block(part, rows, cols, *extra)

    with torch.no_grad():
        whole = enc.block(
            feat, *(torch.from_numpy(t.copy()) for t in tables), *((cell,) if upsampler == "implicit" else ())
        )
        got = in_blocks(block, feat, *tables, size=16)
    assert got.shape == whole.shape == (1, 3, *size)
    assert (got - whole).abs().max() < 1e-5
    assert max(max(s[2:]) for s in seen) == 18 and len(seen) == -(-size[0] // 16) * -(-size[1] // 16)


def test_an_empty_output_is_an_error_naming_it(encoders):
    feat = torch.randn(1, 8, 5, 4)
    with pytest.raises(ValueError, match="at least 1x1, got 0x40"):
        in_blocks(encoders["nearest"].block, feat, np.arange(40) // 8, np.zeros(0, dtype=np.int64))
