"""Bucket planning and the request -> bucket rule (idm_rt.buckets); pure Python, no model."""

import pytest

from idm_rt.buckets import (
    RULE,
    Bucket,
    TileCosts,
    dynamic_limit,
    fitted_tile,
    parse_batch,
    parse_list,
    parse_size,
    plan_buckets,
    route,
    select_bucket,
    tile_side,
)


def test_scales_and_input_size_give_one_bucket_per_output_size():
    buckets = plan_buckets([2, 3, 4, 8], (64, 64))
    assert [(b.height, b.width) for b in buckets] == [(128, 128), (192, 192), (256, 256), (512, 512)]
    assert all((b.min_batch, b.max_batch) == (1, 1) for b in buckets)


def test_input_size_is_width_first_and_outputs_are_rounded():
    assert plan_buckets([2.5], (30, 20)) == [Bucket(50, 75)]  # H = round(20*2.5), W = round(30*2.5)


def test_tiles_with_batch_range_and_duplicates_merge():
    buckets = plan_buckets([2], (64, 64), tiles=[128, 256], batch=(1, 4))
    assert buckets == [Bucket(128, 128, 1, 4), Bucket(256, 256, 1, 4)]
    assert buckets[0].dynamic_batch and buckets[0].name == "128x128_b1-4"


def test_default_is_two_square_tiles():
    assert plan_buckets() == [Bucket(256, 256), Bucket(280, 280)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scales": [2]}, "go together"),
        ({"input_size": (64, 64)}, "go together"),
        ({"scales": [1.0], "input_size": (64, 64)}, "> 1"),
        ({"scales": [float("inf")], "input_size": (64, 64)}, "> 1"),
        ({"tiles": [4]}, "must be between 8x8 and 8192x8192"),
        ({"tiles": [10**6]}, "must be between 8x8 and 8192x8192"),
        ({"tiles": [64], "batch": (1, 10**6)}, "<= 256"),
        ({"tiles": [64], "batch": (3, 2)}, "min <= max"),
    ],
)
def test_bad_plans_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_buckets(**kwargs)


def test_smallest_covering_bucket_is_chosen():
    buckets = [Bucket(256, 256), Bucket(128, 192), Bucket(192, 128), Bucket(512, 512)]
    assert select_bucket(buckets, (128, 128)) == Bucket(128, 192)  # equal areas: smaller height first
    assert select_bucket(buckets, (150, 100)) == Bucket(192, 128)
    assert select_bucket(buckets, (200, 256)) == Bucket(256, 256)
    assert select_bucket(buckets, (600, 10)) is None


def test_route_tiles_with_the_largest_square_inside_the_largest_bucket():
    buckets = [Bucket(64, 64), Bucket(100, 200)]
    r = route(buckets, (300, 300), multiple=16)
    assert r.bucket is None and r.tile == 96  # min(100, 200) rounded down to a multiple of 16
    assert "tiles of 96x96" in r.describe()
    exact = route(buckets, (64, 64), multiple=16)
    assert exact.tile is None and "exact fit" in exact.describe()
    assert "the dynamic graph at 64x60" in route(buckets, (60, 64), multiple=16).describe()


def test_route_fits_the_tiles_to_the_output():
    """The side whose tiles (32-px overlaps, strides on the U-Net's grid of 8) cover the output with the fewest
    pixels, counted by hand: 512 needs 3 tiles an axis at any side up to 256, of 192 at least (stride 160:
    0, 160, 320); 1024 needs 5, of 232 at least (stride 200: 0, 200, 400, 600, 792); 2048 needs 9 of 256 (stride
    224), 10 or more of any smaller side."""
    buckets = [Bucket(256, 256)]
    assert [route(buckets, (s, s), multiple=8).tile for s in (512, 1024, 2048)] == [192, 232, 256]
    assert route(buckets, (1024, 200), multiple=8).tile == 232  # the rows alone decide: 200 fits one tile
    assert fitted_tile(buckets, (512, 512), multiple=8) == 192


def test_route_weighs_the_static_graphs_speed():
    """Static graphs 1.4x faster per pixel: 1024 keeps the bucket's own 256 tiles (25 x 256^2 = 1.64 M pixels
    against 25 x 232^2 x 1.4 = 1.88 M), 512 still takes 192 (9 x 192^2 x 1.4 = 0.46 M against 9 x 256^2 = 0.59 M);
    the engine runners pass theirs (idm_rt.backends.base.bucket_tile)."""
    from types import SimpleNamespace

    from idm_rt.backends.base import bucket_tile

    buckets = [Bucket(256, 256)]
    assert [route(buckets, (s, s), 8, TileCosts(static_speedup=1.4)).tile for s in (512, 1024)] == [192, 256]
    runner = SimpleNamespace(buckets=buckets, config=SimpleNamespace(size_multiple=8))
    runner.tile_costs = lambda: TileCosts(static_speedup=1.4)
    assert bucket_tile(runner, (1024, 1024)) == 256 and bucket_tile(runner, (256, 256)) is None
    runner.tile_costs = lambda: TileCosts()
    assert bucket_tile(runner, (1024, 1024)) == 232


def test_route_reaches_beyond_the_bucket_where_the_dynamic_graph_does():
    """Dynamic tiles up to twice the bucket's side, counted by hand with 32-px overlaps on the grid of 8. Without
    attention a 512x512 output runs untiled (0.26 M pixels against 4 tiles of 272, 0.30 M) and 1024 takes 3 x 3 tiles
    of 368 (stride 336: 0, 336, 656; 1.22 M against 4 x 4 of 280, 1.25 M). With a call costing (1 + area / 2^19)
    per pixel (1.5x at 512x512): 512 takes 4 x 272 (0.34 M against 0.39 M untiled and 0.36 M in 9 x 192), 1024
    takes 4 x 4 of 280 (1.44 M against 1.53 M in 368s)."""
    buckets = [Bucket(256, 256)]
    reach = TileCosts(reach=2)
    assert fitted_tile(buckets, (512, 512), 8, reach) is None
    assert route(buckets, (512, 512), 8, reach).describe().endswith("(beyond every bucket, within its reach)")
    assert fitted_tile(buckets, (1024, 1024), 8, reach) == 368
    costs = TileCosts(attention=0.5 / 512**2, reach=2)
    assert [fitted_tile(buckets, (s, s), 8, costs) for s in (512, 1024)] == [272, 280]
    assert dynamic_limit(buckets, 8, costs) == 512 and dynamic_limit(buckets, 8) == 256


def test_tile_side_refuses_a_bucket_too_small_to_tile():
    with pytest.raises(ValueError, match="too small to tile"):
        tile_side([Bucket(24, 24)], multiple=16)


def test_parsers():
    assert parse_size("64x48") == (64, 48)
    assert parse_list("2,3.5", float) == [2.0, 3.5]
    assert parse_batch("4") == (4, 4) and parse_batch("1,4") == (1, 4)
    for bad, fn in [
        ("64", parse_size),
        ("2,x", lambda t: parse_list(t, int)),
        ("4,1", parse_batch),
        ("0", parse_batch),
    ]:
        with pytest.raises(ValueError):
            fn(bad)


def test_the_rule_is_what_routing_does():
    """Each numbered clause of RULE, checked against route() on buckets of 64x64 and 32x48."""
    buckets = [Bucket(64, 64), Bucket(32, 48)]
    assert RULE.startswith("1.") and "`" not in RULE  # plain text, printed by --explain
    assert "2. when a bucket covers" in RULE and route(buckets, (64, 64), 8).tile is None  # exact: static
    assert route(buckets, (40, 40), 8).bucket is not None  # covered: untiled on the dynamic graph
    tile = route(buckets, (100, 30), 8).tile  # tiled: a multiple of 8, from half the largest bucket's side to all of it
    assert "3. when no bucket covers" in RULE and tile % 8 == 0 and 32 <= tile <= 64
