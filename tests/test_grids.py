"""Sample grids, fixed grid noise, slerp and the curves figure."""

from __future__ import annotations

import torch
from PIL import Image

from ganforge.core.grids import fixed_grid_inputs, plot_curves, save_grid, slerp


def test_fixed_inputs_are_reproducible_and_whole_rows_for_conditional():
    z1, y1, nrow1 = fixed_grid_inputs(64, 8, 10, False, seed=3)
    z2, _, _ = fixed_grid_inputs(64, 8, 10, False, seed=3)
    assert torch.equal(z1, z2) and y1 is None and nrow1 == 8
    assert not torch.equal(z1, fixed_grid_inputs(64, 8, 10, False, seed=4)[0])
    z, y, nrow = fixed_grid_inputs(64, 8, 10, True, seed=3)
    assert z.shape == (70, 8) and nrow == 10  # rounded up to 7 whole rows of 10 classes
    assert y.tolist() == list(range(10)) * 7  # each column is one class


def test_grids_are_near_square_whatever_the_number_of_classes():
    """A two-class model's 64 samples were 2 columns x 32 rows; now 8 x 8, a class a column."""
    from ganforge.core.latent import grid_columns

    for classes in (1, 2, 3, 5, 10, 16):
        z, y, nrow = fixed_grid_inputs(64, 8, classes, True, seed=0)
        rows = len(z) // nrow
        assert len(z) % nrow == 0 and nrow % classes == 0, classes
        assert 0.5 <= nrow / rows <= 2, (classes, nrow, rows)
        assert (y.view(rows, nrow) == y[:nrow]).all()  # every column holds one class
    assert (grid_columns(64, 2, True), grid_columns(64, 10, True)) == (8, 10)
    assert grid_columns(4, 10, True) == 4  # fewer samples than classes: one row
    assert [grid_columns(n, 10, False) for n in (1, 10, 64)] == [1, 4, 8]


def test_grid_png_size_and_pixels(tmp_path):
    images = torch.full((16, 1, 16, 16), -1.0)
    images[0] = 1.0  # one white tile, the rest black
    save_grid(images, tmp_path / "g.png", nrow=4)
    im = Image.open(tmp_path / "g.png")
    # 16 px tiles enlarged x3 to 48, 2 px padding: 4 * (48 + 2) + 2
    assert im.size == (202, 202)
    px = im.convert("L")
    assert px.getpixel((2 + 10, 2 + 10)) == 255 and px.getpixel((52 + 10, 2 + 10)) == 0
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind


def test_slerp_ends_at_its_endpoints_and_stays_on_the_shell():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)  # same norms
    path = slerp(a, b, torch.linspace(0, 1, 5))  # (3, 5, 16)
    assert path.shape == (3, 5, 16)
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=2), a.norm(dim=1, keepdim=True).expand(3, 5), atol=1e-4)


def test_curves_png(tmp_path):
    history = [{"step": i, "d_loss": 1.0 / (i + 1), "g_loss": 0.5} for i in range(1, 300)]
    assert plot_curves(
        history, [{"step": 100, "fid": 5.0}, {"step": 200, "fid": 3.0}], tmp_path / "c.png"
    )
    assert Image.open(tmp_path / "c.png").size[0] > 600  # two panels
    assert not plot_curves([], [], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
