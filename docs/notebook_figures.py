"""Copy the first figure of each executed notebook to ``docs/nb_<name>.png`` (a thumbnail) for
the README's Notebooks section. ``make notebooks`` runs it after re-executing the notebooks."""

import base64
import io
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def first_png(notebook: Path):
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                return base64.b64decode(output["data"]["image/png"])
    return None


def main():
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        png = first_png(notebook)
        if png is None:
            print(f"{notebook.name}: no figure in its stored outputs (run `make notebooks`)")
            continue
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.thumbnail((640, 360))
        target = ROOT / "docs" / f"nb_{notebook.stem}.png"
        image.save(target, optimize=True)
        print(f"{notebook.name} -> {target.relative_to(ROOT)} {image.size}")


if __name__ == "__main__":
    main()
