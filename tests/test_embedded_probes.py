"""The cell windows of benchmarks/embedded_probes.py: each covers its whole scene cell."""

import importlib.util
import os

import numpy as np
import pytest

from blip_jax.data.synthetic import COLS, ROWS

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "embedded_probes.py")
spec = importlib.util.spec_from_file_location("embedded_probes", _PATH)
probes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probes)


@pytest.mark.parametrize("grid", [8, 16, 64, 96])
def test_window_covers_the_cell(grid):
    sizes = set()
    for i, row in enumerate(ROWS):
        for j, col in enumerate(COLS):
            rows, cols = probes.object_window({"row": row, "col": col}, grid)
            sizes.add((rows.stop - rows.start, cols.stop - cols.start))
            assert 0 <= rows.start and rows.stop <= grid and 0 <= cols.start and cols.stop <= grid
            # the cell spans [i * grid / 3, (i + 1) * grid / 3) in map units: every unit it touches is in
            assert rows.start <= int(i * grid / 3) and rows.stop >= -(-(i + 1) * grid // 3)
            assert cols.start <= int(j * grid / 3) and cols.stop >= -(-(j + 1) * grid // 3)
    assert sizes == {(-(-grid // 3) + 1,) * 2}


def test_cell_features_read_the_window():
    grid = 8
    maps = np.arange(2 * grid * grid * 2, dtype=np.float32).reshape(2, grid, grid, 2)
    objects = [{"row": "top", "col": "left"}, {"row": "bottom", "col": "center"}]
    f = probes.cell_features(maps, objects)
    assert f.shape == (2, 4 * 4 * 2)
    np.testing.assert_array_equal(f[0], maps[0, 0:4, 0:4].reshape(-1))
    np.testing.assert_array_equal(f[1], maps[1, 4:8, 2:6].reshape(-1))
