"""Copy the first figure of each executed notebook to ``docs/nb_<name>.png`` (a thumbnail) for
the README's Notebooks section, and the quickstart's attention maps (its last figure) to
``docs/attention_cpu_demo.png`` for ``docs/RESULTS.md``. ``make notebooks`` runs it after
re-executing the notebooks."""

import base64
import io
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def pngs(notebook: Path) -> list[bytes]:
    return [base64.b64decode(output["data"]["image/png"])
            for cell in json.loads(notebook.read_text())["cells"]
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def main():
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        figures = pngs(notebook)
        if not figures:
            print(f"{notebook.name}: no figure in its stored outputs (run `make notebooks`)")
            continue
        if notebook.stem == "00_quickstart":
            (ROOT / "docs" / "attention_cpu_demo.png").write_bytes(figures[-1])
        image = Image.open(io.BytesIO(figures[0])).convert("RGB")
        image.thumbnail((640, 360))
        target = ROOT / "docs" / f"nb_{notebook.stem}.png"
        image.save(target, optimize=True)
        print(f"{notebook.name} -> {target.relative_to(ROOT)} {image.size}")


if __name__ == "__main__":
    main()
