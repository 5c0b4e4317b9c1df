"""Fluorescence nuclei from the stardist wheel on PyPI, split by image region.

The ``stardist`` 0.9.2 wheel (BSD-3) ships ``stardist/data/images/img2d.tif``, a real 512x512
16-bit fluorescence image from the 2018 Data Science Bowl, and ``mask2d.tif``, its instance mask
(125 nuclei, 19.9% foreground). Only those two files are read (with ``tifffile``, straight from
the wheel zip); stardist itself is never installed or imported.

The image is cut into three disjoint regions so no pixel, and therefore no training tile, is in
two splits::

    train  rows   0-320, all columns      (320 x 512)
    val    rows 320-512, columns   0-192  (192 x 192)
    test   rows 320-512, columns 192-512  (192 x 320)

Each split is ``<split>/images/nuclei.tif`` (the raw uint16 region, normalised by percentiles
when read) and ``<split>/masks/nuclei.png`` (0 background, 1 nucleus). With ``boundary=True``
(dataset ``nuclei-boundary``) the masks have three classes, the standard instance-aware setup:
0 background, 1 nucleus interior, 2 boundary (the pixels of each nucleus that touch another
label, from ``skimage.segmentation.find_boundaries(mode="inner")``), so touching nuclei are
separated by a boundary line.

Where the wheel is looked for, first hit wins: ``$TLMULTI_STARDIST_WHEEL``; an installed
``stardist`` package's data folder; ``$TLMULTI_HOME/downloads/stardist-0.9.2-*.whl``; else
``pip download --no-deps stardist==0.9.2`` into that folder (not with ``TLMULTI_OFFLINE=1``).

Example::

    from tlmulti.datasets import prepare
    root = prepare("nuclei")   # ~/.cache/tlmulti/datasets/nuclei/{train,val,test}/{images,masks}
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from tlmulti import paths
from tlmulti.errors import DataError

VERSION = "0.9.2"
IMAGE = "stardist/data/images/img2d.tif"
MASK = "stardist/data/images/mask2d.tif"
# (row start, row end, column start, column end) as fractions of the image
REGIONS = {
    "train": (0.0, 0.625, 0.0, 1.0),
    "val": (0.625, 1.0, 0.0, 0.375),
    "test": (0.625, 1.0, 0.375, 1.0),
}
_HOW = (f"run 'pip download --no-deps stardist=={VERSION} -d {{folder}}' on a machine with PyPI access "
        "and copy the wheel there (or set TLMULTI_STARDIST_WHEEL to its path)")


def downloads_dir() -> Path:
    return paths.home() / "downloads"


def find_source() -> Path | None:
    """The wheel file, or an installed stardist package folder, holding the two TIFFs."""
    env = os.environ.get("TLMULTI_STARDIST_WHEEL")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DataError(f"TLMULTI_STARDIST_WHEEL points to '{path}', which does not exist; fix or unset it.")
        return path
    found = importlib.util.find_spec("stardist")
    if found is not None and found.submodule_search_locations:
        pkg = Path(list(found.submodule_search_locations)[0])
        if (pkg / "data" / "images" / "img2d.tif").is_file():
            return pkg
    wheels = sorted(downloads_dir().glob(f"stardist-{VERSION}-*.whl"))
    return wheels[0] if wheels else None


def download() -> Path:
    """``pip download`` the wheel (no dependencies) into the downloads folder."""
    folder = downloads_dir()
    if paths.offline():
        raise DataError("The stardist wheel is not on this machine and TLMULTI_OFFLINE is set; " + _HOW.format(folder=folder) + ".")
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"stardist=={VERSION}", "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob(f"stardist-{VERSION}-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DataError(f"Could not download the stardist wheel ({reason[0]}); " + _HOW.format(folder=folder) + ".")
    return wheels[0]


def load(source: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint16 (512, 512), instance mask (512, 512))`` from a wheel or package folder."""
    import tifffile

    source = source or find_source() or download()
    try:
        if source.is_dir():
            image = tifffile.imread(str(source / "data" / "images" / "img2d.tif"))
            mask = tifffile.imread(str(source / "data" / "images" / "mask2d.tif"))
        else:
            with zipfile.ZipFile(source) as wheel:
                image = tifffile.imread(io.BytesIO(wheel.read(IMAGE)))
                mask = tifffile.imread(io.BytesIO(wheel.read(MASK)))
    except (KeyError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"'{source}' is not a usable stardist {VERSION} wheel ({type(exc).__name__}: {exc}); "
                        + _HOW.format(folder=downloads_dir()) + ".") from None
    if image.shape != mask.shape or image.ndim != 2:
        raise DataError(f"'{source}': image {image.shape} and mask {mask.shape} do not match.")
    return image, mask


def region_boxes(shape, regions=None) -> dict[str, tuple[int, int, int, int]]:
    """Pixel boxes (r0, r1, c0, c1) of each split for an image of ``shape``."""
    h, w = shape
    return {name: (int(round(a * h)), int(round(b * h)), int(round(c * w)), int(round(d * w)))
            for name, (a, b, c, d) in (regions or REGIONS).items()}


def boundary_mask(instances: np.ndarray) -> np.ndarray:
    """0 background, 1 interior, 2 boundary of an instance mask (each instance's inner rim)."""
    from skimage.segmentation import find_boundaries

    mask = (instances > 0).astype(np.uint8)
    mask[find_boundaries(instances, mode="inner") & (instances > 0)] = 2
    return mask


def build(root: Path, source: str | None = None, regions=None, boundary: bool = False) -> None:
    """Write ``root/<split>/images/nuclei.tif`` and ``root/<split>/masks/nuclei.png``."""
    import tifffile
    from PIL import Image

    image, instances = load(Path(source) if source else None)
    mask = boundary_mask(instances) if boundary else (instances > 0).astype(np.uint8)
    boxes = region_boxes(image.shape, regions)
    for split, (r0, r1, c0, c1) in boxes.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        tifffile.imwrite(str(root / split / "images" / "nuclei.tif"), image[r0:r1, c0:c1])
        Image.fromarray(mask[r0:r1, c0:c1]).save(root / split / "masks" / "nuclei.png")
    classes = ["background", "nucleus", "boundary"] if boundary else ["background", "nucleus"]
    info = {"source": f"stardist=={VERSION} wheel: {IMAGE}, {MASK}", "classes": classes,
            "regions": {k: {"rows": [v[0], v[1]], "cols": [v[2], v[3]]} for k, v in boxes.items()},
            "foreground": {k: float((mask[v[0]:v[1], v[2]:v[3]] > 0).mean()) for k, v in boxes.items()}}
    (root / "dataset.json").write_text(json.dumps(info, indent=2))
