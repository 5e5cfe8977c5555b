"""explorer.py: drive the attention explorer's widgets as a student would and check the figure
follows; uploads of every image mode, and a clear message for a file that is no image."""

import datetime
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ipywidgets")

from dino_lite.attention import attention_maps, mass_mask, shapes_attention_set, upsample  # noqa: E402
from dino_lite.config import make_config  # noqa: E402
from dino_lite.evaluate import random_init_backbone  # noqa: E402
from dino_lite.explorer import AttentionExplorer, NotAnImageError, image_from_bytes  # noqa: E402


@pytest.fixture(scope="module")
def explorer():
    cfg = make_config("cpu-demo")
    trained, random = random_init_backbone(cfg, seed=1), random_init_backbone(cfg, seed=2)
    images, names, masks, _ = shapes_attention_set(cfg.image_size, 3)
    return AttentionExplorer(trained, images, names, masks, random_model=random)


def encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_each_control_changes_what_the_figure_shows(explorer):
    e = explorer
    e.image.value, e.layer.value, e.head.value, e.mass.value = 0, e.n_layers - 1, "mean", 0.6
    expected = attention_maps(e.model, torch.stack(e.images[:3]))[0].mean(0)
    assert torch.allclose(e.shown["map"], expected, atol=1e-5)
    assert e.shown["outline"]                                   # the shapes have true masks

    e.image.value = 2
    assert e.shown["image"] == 2 and titles(e.fig)[0] == e.names[2]
    assert np.allclose(e.fig.axes[0].images[0].get_array(), e.shown["rgb"])

    e.layer.value = 0
    assert "block 0" in titles(e.fig)[2]
    assert torch.allclose(e.shown["map"], e.maps(2)[0].mean(0))

    e.head.value = "1"
    assert "head 1" in titles(e.fig)[2] and "random init: block 0, head 1" == titles(e.fig)[3]
    shown = np.asarray(e.fig.axes[2].images[0].get_array())
    assert np.allclose(shown, upsample(e.maps(2)[0, 1], (64, 64)).numpy())
    assert np.allclose(np.asarray(e.fig.axes[3].images[0].get_array()),
                       upsample(e.maps(2, "random")[0, 1], (64, 64)).numpy())
    # both maps on one scale: 0 .. the largest weight of any head of either network
    lo, hi = e.fig.axes[2].images[0].get_clim()
    assert lo == 0 and hi == pytest.approx(max(float(e.maps(2)[0].max()), float(e.maps(2, "random")[0].max())))
    assert e.fig.axes[3].images[0].get_clim() == (lo, hi)

    before = e.shown["mask"].sum()
    e.mass.value = 0.9
    assert "90%-mass mask" in titles(e.fig)[1]
    assert e.shown["mask"].sum() > before
    assert np.array_equal(e.shown["mask"], upsample(mass_mask(e.maps(2)[0, 1], 0.9), (64, 64)).numpy())

    e.opacity.value = 0.2
    assert e.fig.axes[1].images[1].get_alpha() == pytest.approx(0.2)


def test_controls_update_on_release(explorer):
    for w in (explorer.layer, explorer.mass, explorer.opacity):
        assert w.continuous_update is False


def upload(explorer, data, name):
    """What the browser sends when a file is chosen: the widget's value, observed by the explorer."""
    explorer.upload.value = ({"name": name, "type": "image/png", "size": len(data),
                              "content": memoryview(data),
                              "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "CMYK"])
def test_an_uploaded_image_of_any_mode_is_shown(explorer, mode):
    n = len(explorer.images)
    im = Image.new("RGB", (300, 120), (255, 0, 0))              # a wide red image ...
    if mode == "I;16":
        im = Image.fromarray((np.arange(300)[None].repeat(120, 0) * 200).astype(np.uint16))
    elif mode == "P":
        im = im.convert("P")
    else:
        im = im.convert(mode)
    data = encode(im, "TIFF" if mode == "CMYK" else "PNG")
    upload(explorer, data, f"mine_{mode}.png")
    assert len(explorer.images) == n + 1 and explorer.shown["image"] == n
    assert f"mine_{mode}.png (yours, 300x120)" == titles(explorer.fig)[0]
    assert explorer.shown["rgb"].shape == (64, 64, 3) and not explorer.shown["outline"]
    assert explorer.message.value == ""


def test_exif_rotation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))                      # left half red
    exif = Image.Exif()
    exif[0x0112] = 6                                            # "rotate 90 clockwise to view"
    rgb = image_from_bytes(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.size == (20, 40)                                 # portrait after rotation
    top = np.asarray(rgb)[5, 10]
    assert top[0] > 200 and top[2] < 60                         # the red half is now on top


def test_upload_file_goes_through_the_widget(explorer):
    n = len(explorer.images)
    explorer.upload_file(encode(Image.new("RGB", (50, 50), (0, 255, 0))), "green.png")
    assert explorer.upload.value[0]["name"] == "green.png"
    assert explorer.shown["image"] == n and explorer.shown["rgb"][32, 32, 1] > 0.9


def test_a_file_that_is_no_image_gets_a_clear_message(explorer):
    n, shown = len(explorer.images), explorer.shown["image"]
    upload(explorer, b"%PDF-1.4 not a picture", "notes.pdf")
    assert "notes.pdf is not an image" in explorer.message.value
    assert len(explorer.images) == n and explorer.shown["image"] == shown
    with pytest.raises(NotAnImageError, match="notes.pdf"):
        image_from_bytes(b"%PDF-1.4", "notes.pdf")


def test_an_extremely_elongated_upload_is_cropped_before_it_is_resized(explorer, monkeypatch):
    """A 100000x1 px PNG (a few hundred bytes) was resized by its short side to 6,400,000x64 px
    (1.5 GB) before the centre crop; its central 4:1 part is resized instead."""
    import dino_lite.explorer as ex
    real, seen = ex.eval_transform, []

    def spy(size):
        transform = real(size)

        def run(img):
            seen.append(img.size)
            assert max(img.size) <= 4 * min(img.size), f"a {img.size} image reaches the resize"
            return transform(img)
        return run
    monkeypatch.setattr(ex, "eval_transform", spy)
    for size in ((100000, 1), (1, 100000), (1000, 2)):
        upload(explorer, encode(Image.new("L", size, 200)), "line.png")
        assert explorer.shown["rgb"].shape == (64, 64, 3) and explorer.message.value == ""
        assert titles(explorer.fig)[0] == f"line.png (yours, {size[0]}x{size[1]})"
    assert seen == [(4, 1), (1, 4), (8, 2)]


def test_a_decompression_bomb_gets_the_clear_message(explorer, monkeypatch):
    """A 400-megapixel PNG raised PIL's DecompressionBombError past the message handler."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)         # 100x100 is then a "bomb"
    n, shown = len(explorer.images), explorer.shown["image"]
    upload(explorer, encode(Image.new("RGB", (100, 100))), "huge.png")
    assert "huge.png has too many pixels" in explorer.message.value
    assert "10000 pixels" in explorer.message.value
    assert len(explorer.images) == n and explorer.shown["image"] == shown
    with pytest.raises(NotAnImageError, match="huge.png has too many pixels"):
        image_from_bytes(encode(Image.new("RGB", (100, 100))), "huge.png")
