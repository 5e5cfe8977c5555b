"""An interactive attention explorer: any image (the data set's, or one the student uploads),
any block and head, the 60%-mass mask, the true object outline when a mask is known, and the
same view of the network at random initialisation; a second view shows the PCA colours of the
last block's patch features (dino_lite.pca), one PCA over all the explorer's images.

:class:`AttentionExplorer` holds its controls (ipywidgets, updating on release rather than on
every drag) and redraws one matplotlib figure when a control changes; ``explorer.fig`` is that
figure, so a script or a test can drive the controls and read what is shown.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .attention import (CMAP, MASK_COLOUR, OUTLINE_COLOUR, all_attentions, attention_norm,
                        cls_attention, mass_mask, to_rgb, upsample)
from .data import cap_aspect, eval_transform, rgb8
from .pca import CAPTION, pca_rgb, upsample_rgb

class NotAnImageError(ValueError):
    """Uploaded bytes that cannot be shown: no image decoder reads them, or they decode to more
    pixels than PIL opens safely."""


def image_from_bytes(data: bytes, name: str = "upload") -> Image.Image:
    """Decode an uploaded file into 8-bit RGB, whatever its mode (:func:`dino_lite.data.rgb8`),
    with its EXIF orientation applied (phone photos). Images over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, twice it for an error) are refused."""
    try:
        im = Image.open(io.BytesIO(bytes(data)))
        im.load()
    except Image.DecompressionBombError as err:
        raise NotAnImageError(f"{name} has too many pixels to open safely ({err}); shrink it, for "
                              "example to 2000 px on its long side, and upload it again") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise NotAnImageError(f"{name} is not an image PIL can read ({type(err).__name__}: {err})") from err
    return rgb8(ImageOps.exif_transpose(im))


class AttentionExplorer:
    """Widgets over ``model``'s CLS attention on ``images`` (``[B, 3, S, S]``, normalised).

    ``masks`` (``[B, S, S]`` bool), when given, draws each image's true object outline;
    ``random_model`` adds the same map of a randomly initialised network beside the trained one,
    on the same colour scale. Uploaded images are resized and centre-cropped to ``S`` px, the
    size the network was trained at (one more elongated than 4:1 is first cut to its central 4:1
    part), and join the list of images.
    """

    def __init__(self, model, images: torch.Tensor, names=None, masks=None, random_model=None,
                 mass: float = 0.6):
        import ipywidgets as widgets

        self.model, self.random_model = model, random_model
        self.size = images.shape[-1]
        self.images = list(images)
        self.names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        self.masks = list(masks) if masks is not None else [None] * len(images)
        self._maps: dict = {}
        self._pca: dict = {}                       # PCA colours per network, over all images
        self.n_layers, self.n_heads = len(model.blocks), model.blocks[0].attn.num_heads
        self.fig = None
        self.shown: dict = {}                      # what the figure shows, for scripts and tests

        opts = dict(continuous_update=False, style={"description_width": "70px"})
        self.image = widgets.Dropdown(options=self._image_options(), value=0, description="image")
        self.layer = widgets.IntSlider(self.n_layers - 1, 0, self.n_layers - 1, description="block", **opts)
        self.head = widgets.Dropdown(options=["mean"] + [str(h) for h in range(self.n_heads)],
                                     value="mean", description="head")
        self.mass = widgets.FloatSlider(mass, min=0.1, max=0.95, step=0.05, description="mass",
                                        readout_format=".0%", **opts)
        self.opacity = widgets.FloatSlider(0.5, min=0.0, max=1.0, step=0.1, description="opacity", **opts)
        self.view = widgets.ToggleButtons(options=["attention", "PCA"], value="attention",
                                          description="view", style={"button_width": "80px"})
        self.upload = widgets.FileUpload(accept="image/*", multiple=False,
                                         description="your image")
        self.message = widgets.HTML("")
        self.output = widgets.Output()
        for w in (self.image, self.layer, self.head, self.mass, self.opacity, self.view):
            w.observe(self._on_change, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.image, self.upload]), self.view,
            widgets.HBox([self.layer, self.head]),
            widgets.HBox([self.mass, self.opacity]),
            self.message, self.output])
        self.redraw()

    # -- data --------------------------------------------------------------------------------

    def _image_options(self):
        return [(n, i) for i, n in enumerate(self.names)]

    def maps(self, index: int, which: str = "trained") -> torch.Tensor:
        """``[layers, heads, h, w]`` CLS attention of image ``index``, computed once."""
        key = (index, which)
        if key not in self._maps:
            model = self.model if which == "trained" else self.random_model
            x = self.images[index][None]
            p = model.patch_embed.patch_size[0]
            grid = (x.shape[-2] // p, x.shape[-1] // p)
            prefix = getattr(model, "num_prefix_tokens", 1)
            self._maps[key] = torch.stack([cls_attention(a, grid, prefix)[0]
                                           for a in all_attentions(model, x)])
        return self._maps[key]

    def add_image(self, data: bytes, name: str = "upload") -> int:
        """Decode ``data`` (any image file's bytes), add it to the images, select it; returns its
        index. Bytes that are no image raise :class:`NotAnImageError`."""
        rgb = image_from_bytes(data, name)
        # the view is the central square; a 100000 x 1 px line resized whole would take gigabytes
        self.images.append(eval_transform(self.size)(cap_aspect(rgb)))
        self.names.append(f"{name} (yours, {rgb.width}x{rgb.height})")
        self.masks.append(None)
        self._pca.clear()                          # one PCA over all images: refit with this one
        index = len(self.images) - 1
        self.image.options = self._image_options()
        self.image.value = index                   # triggers a redraw
        return index

    def upload_file(self, data: bytes, name: str = "upload.png", mime: str = "image/png"):
        """Put ``data`` into the upload widget as the browser does when a file is chosen (the same
        path as the button: the widget's observer decodes it); for scripts and tests."""
        from datetime import datetime, timezone
        self.upload.value = ({"name": name, "type": mime, "size": len(data), "content": memoryview(data),
                              "last_modified": datetime.now(timezone.utc)},)

    def _on_upload(self, change):
        for item in change["new"]:
            try:
                self.add_image(item["content"], item.get("name", "upload"))
                self.message.value = ""
            except NotAnImageError as err:
                self.message.value = f"<b style='color:#b00'>{err}</b>"

    def _on_change(self, change=None):
        self.redraw()

    def pca_colours(self, index: int, which: str = "trained") -> torch.Tensor:
        """``[h, w, 3]`` PCA colours of image ``index``: the last block's patch tokens of ALL the
        explorer's images (uploads included) projected on their first three principal
        components (:func:`dino_lite.pca.pca_rgb`), fitted once per network and image list."""
        if which not in self._pca:
            model = self.model if which == "trained" else self.random_model
            self._pca[which] = pca_rgb(model, torch.stack(self.images))
        return self._pca[which]["rgb"][index]

    # -- drawing -----------------------------------------------------------------------------

    def _draw_pca(self, i):
        """The PCA view: the image and the PCA colours of the trained (and random-init) network."""
        import matplotlib.pyplot as plt
        rgb = to_rgb(self.images[i])
        panels = [("trained", "trained")] + [("random init", "random")] * (self.random_model is not None)
        fig, axes = plt.subplots(1, 1 + len(panels), figsize=(2.6 * (1 + len(panels)) + 1.2, 3.5))
        fig.subplots_adjust(bottom=0.22, top=0.88, left=0.02, right=0.98, wspace=0.06)
        axes[0].imshow(rgb)
        axes[0].set_title(self.names[i], fontsize=8)
        for ax, (label, which) in zip(axes[1:], panels):
            ax.imshow(upsample_rgb(self.pca_colours(i, which), rgb.shape[:2]))
            ev = ", ".join(f"{e:.0%}" for e in self._pca[which]["explained"])
            ax.set_title(f"{label}: PCA of patches", fontsize=8)
            ax.set_xlabel(f"R, G, B explain {ev}", fontsize=7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.text(0.5, 0.02, textwrap.fill(CAPTION.format(n=len(self.images)), 110), ha="center",
                 fontsize=7)
        self.shown = {"image": i, "name": self.names[i], "view": "PCA", "pca": self.pca_colours(i),
                      "rgb": rgb}
        return fig

    def _select(self, maps: torch.Tensor) -> torch.Tensor:
        m = maps[self.layer.value]
        return m.mean(0) if self.head.value == "mean" else m[int(self.head.value)]

    def redraw(self):
        """Draw the figure for the controls' current values (into the output widget too)."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        i, layer, head, mass = self.image.value, self.layer.value, self.head.value, self.mass.value
        if self.fig is not None:
            plt.close(self.fig)
        if self.view.value == "PCA":
            return self._show(self._draw_pca(i))
        trained = self.maps(i)
        m = self._select(trained)
        panels = [("trained", m)]
        if self.random_model is not None:
            panels.append(("random init", self._select(self.maps(i, "random"))))
        # heads on one scale: 0 .. the largest patch weight of any head (and of the mean) of this
        # image and block, for both networks, so a head that looks brighter really attends harder
        vmax = float(trained[layer].max())
        if self.random_model is not None:
            vmax = max(vmax, float(self.maps(i, "random")[layer].max()))
        rgb, gt = to_rgb(self.images[i]), self.masks[i]
        size = rgb.shape[:2]
        grid = m.shape
        ncol = 2 + len(panels)
        fig, axes = plt.subplots(1, ncol, figsize=(2.6 * ncol + 1.2, 3.3))
        fig.subplots_adjust(bottom=0.17, top=0.88, left=0.02, right=0.85, wspace=0.06)
        axes[0].imshow(rgb)
        axes[0].set_title(self.names[i], fontsize=8)
        mask = upsample(mass_mask(m, mass), size).numpy()
        axes[1].imshow(rgb)
        axes[1].imshow(np.ma.masked_where(mask < 0.5, mask), cmap=ListedColormap([MASK_COLOUR]),
                       alpha=self.opacity.value)
        axes[1].set_title(f"{mass:.0%}-mass mask, trained", fontsize=8)
        for ax, (label, mp) in zip(axes[2:], panels):
            im = ax.imshow(upsample(mp, size).numpy(), cmap=CMAP, norm=attention_norm(vmax))
            ax.set_title(f"{label}: block {layer}, head {head}", fontsize=8)
        for ax in axes:
            if gt is not None:
                ax.contour(gt.float().numpy(), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].set_xlabel(f"{size[1]} x {size[0]} px", fontsize=8)
        for ax in axes[2:]:
            ax.set_xlabel(f"{grid[1]} x {grid[0]} patches", fontsize=8)
        cax = fig.add_axes([0.87, 0.17, 0.012, 0.71])
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("share of the CLS attention per patch\n(square-root scale; maps sum to 1)", fontsize=7)
        cb.ax.tick_params(labelsize=7)
        handles = [Patch(color=MASK_COLOUR, alpha=max(self.opacity.value, 0.3),
                         label=f"patches holding {mass:.0%} of the attention")]
        if gt is not None:
            handles.append(Line2D([], [], color=OUTLINE_COLOUR, label="true object outline"))
        fig.legend(handles=handles, loc="lower left", ncol=2, fontsize=8, frameon=False)
        self.shown = {"view": "attention", "image": i, "name": self.names[i], "layer": layer,
                      "head": head, "mass": mass, "map": m, "mask": mask, "vmax": vmax, "rgb": rgb, "outline": gt is not None}
        return self._show(fig)

    def _show(self, fig):
        import matplotlib.pyplot as plt
        self.fig = fig
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display
            display(fig)
        plt.close(fig)                             # shown through the output widget only
        return fig
