"""Medical and scientific image files as stacks of 2-D slices, intensity normalisation, tiling.

Every reader returns a stack ``(n, H, W, C)`` of raw values (``n`` is 1 for a plain 2-D image):

* PNG / JPEG / BMP / GIF through Pillow; 8/16-bit and float TIFF (and multi-page stacks) through
  ``tifffile``;
* DICOM through ``pydicom``: the modality LUT is applied (CT values become Hounsfield units),
  MONOCHROME1 is inverted so that high values are bright, multi-frame files give one slice per
  frame, and the file's own window (``WindowCenter`` / ``WindowWidth``) is kept for
  ``normalize: window``;
* NIfTI (``.nii`` / ``.nii.gz``) through ``nibabel``: the volume is reoriented to the closest
  canonical (RAS+) orientation and cut into 2-D slices along ``axis`` (2: axial), so the same
  recipe slices every scanner's volumes the same way.

:func:`to_uint8` then maps raw values to the 0..255 range the models take: 8-bit images pass
unchanged (``auto``), anything wider is scaled by robust percentiles of the whole image or volume
(never per tile, so a tile without tissue is not stretched into noise), or by a CT window.

Pillow opens plain images through :func:`open_image`, which refuses a file declaring more pixels
than :func:`pixel_limit` (a decompression bomb) with one line naming the file.

Large images are cut into overlapping tiles (:func:`tile_boxes`, :func:`extract_tiles`) and
predictions are put back together by averaging the overlaps (:func:`stitch`), which gives back
exactly the input size.

Example::

    from tlmulti.data.medical import read_stack, to_uint8, tile_boxes, extract_tiles, stitch
    stack, info = read_stack("ct/CT_small.dcm")          # (1, 128, 128, 1) in HU
    image = to_uint8(stack, "window", window=(40, 400))[0]  # soft-tissue window, uint8
    boxes = tile_boxes(image.shape[:2], tile=(64, 64), stride=(32, 32))
    tiles = extract_tiles(image, boxes, (64, 64))          # (9, 64, 64, 1)
    assert (stitch(tiles, boxes, image.shape[:2]) == image).all()
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlmulti.choices import INTENSITY_NORMALIZATIONS
from tlmulti.errors import DataError

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
SUFFIXES = PLAIN_SUFFIXES + TIFF_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES
NORMALIZATIONS = INTENSITY_NORMALIZATIONS
MAX_PIXELS_VARIABLE = "TLMULTI_MAX_IMAGE_PIXELS"
_SILENCED = []  # Pillow's DecompressionBombWarning filtered out (once per process)


def suffix_of(path) -> str:
    """The file's format suffix, lower case; ``.nii.gz`` counts as one suffix."""
    from tlmulti.data.manifest import file_suffix

    return file_suffix(path)


def stem_of(path) -> str:
    """File name without its format suffix (``case1.nii.gz`` -> ``case1``)."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))]


def is_supported(path) -> bool:
    return suffix_of(path) in SUFFIXES


def list_files(folder) -> list[Path]:
    """Supported image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))


@dataclass
class StackInfo:
    """What a reader learnt about a file besides its pixels.

    ``bits8``: the stored values are 8-bit (normalisation ``auto`` leaves them as they are);
    ``window``: DICOM (center, width) if the file has one; ``affine``: NIfTI voxel-to-world matrix
    of the canonical orientation (used to write predicted masks back as NIfTI); ``axis``: the
    NIfTI axis the slices were cut along; ``shape``: the canonical volume shape.
    """

    kind: str
    bits8: bool = False
    window: tuple[float, float] | None = None
    affine: Any = None
    axis: int | None = None
    shape: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)


def read_stack(path, axis: int = 2) -> tuple[np.ndarray, StackInfo]:
    """Raw pixel values of any supported file as ``(n, H, W, C)`` plus what else was learnt.

    ``axis`` is the NIfTI axis slices are taken along (0 sagittal, 1 coronal, 2 axial after
    reorientation to RAS+). Unreadable files raise :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image '{path}' does not exist.")
    suffix = suffix_of(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti(path, axis)
        if suffix in DICOM_SUFFIXES:
            return _read_dicom(path)
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path)
        if suffix in NUMPY_SUFFIXES:
            array = np.load(path, allow_pickle=False)
            return _as_stack(array, path), StackInfo("numpy", bits8=array.dtype == np.uint8)
        if suffix in PLAIN_SUFFIXES:
            return _read_plain(path)
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(f"Cannot read '{path}': {exc}; install the missing package (pip install {exc.name}).") from None
    except Exception as exc:  # every reader library has its own exception types
        raise DataError(f"Cannot read '{path}' ({type(exc).__name__}: {exc}); remove or replace the file.") from None
    raise DataError(f"'{path}' is not a supported image ({', '.join(SUFFIXES)}).")


def stack_shape(path, axis: int = 2) -> tuple[int, int, int] | None:
    """``(n, H, W)`` of what :func:`read_stack` would return, read from the file's header only
    (no pixel data decoded); None when the header does not say (the file is then read to know)."""
    suffix = suffix_of(path)
    try:
        if suffix in PLAIN_SUFFIXES:
            with open_image(path) as img:
                w, h = oriented_size(img)
                return 1, h, w
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(str(path))
            shape = tuple(int(v) for v in img.shape)
            if len(shape) == 4 and shape[3] == 1:
                shape = shape[:3]
            if len(shape) != 3 or not 0 <= axis <= 2:
                return None
            order = np.argsort(nib.orientations.io_orientation(img.affine)[:, 0])
            canonical = [shape[i] for i in order]
            rest = [canonical[i] for i in range(3) if i != axis]
            return canonical[axis], rest[0], rest[1]
        if suffix in DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(getattr(ds, "NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                series = tif.series[0]
                dims = [n for a, n in zip(series.axes, series.shape) if a != "S"]
            if len(dims) < 2:
                return None
            return int(np.prod(dims[:-2], dtype=np.int64)), int(dims[-2]), int(dims[-1])
        if suffix in NUMPY_SUFFIXES:
            stack = _as_stack(np.load(path, mmap_mode="r", allow_pickle=False), path)
            return tuple(int(v) for v in stack.shape[:3])
    except Exception:  # unreadable or unusual: decoding the file reports it the usual way
        return None
    return None


def _as_stack(array: np.ndarray, path, colour: bool | None = None) -> np.ndarray:
    """(H, W) -> (1, H, W, 1); (H, W, C<=4) -> (1, H, W, C); (n, H, W) -> (n, H, W, 1).

    ``colour`` says whether a 3-D array's last axis is colour; None guesses (last axis of 3 or 4
    on an image larger than 4 rows)."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a[None, :, :, None]
    if a.ndim == 3:
        if colour is None:
            colour = a.shape[-1] in (1, 3, 4) and a.shape[0] > 4
        return a[None] if colour else a[..., None]
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return a
    raise DataError(f"'{path}' has an array of shape {a.shape}; expected a 2-D image, a colour image or a stack of them.")


def pixel_limit() -> int | None:
    """The most pixels an image file may declare: ``TLMULTI_MAX_IMAGE_PIXELS`` when set, else
    Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default; None: no limit)."""
    from PIL import Image

    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{MAX_PIXELS_VARIABLE} must be a whole number of pixels (e.g. 200000000), got {value!r}.")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses above twice its own limit
    return limit


@contextlib.contextmanager
def open_image(path):
    """``PIL.Image.open(path)`` that refuses, with a :class:`DataError` naming the file and the
    limit, an image declaring more pixels than :func:`pixel_limit` (a decompression bomb: a tiny
    file that would decode to gigabytes). Pillow's own warning about such files is silenced,
    since they are refused here."""
    from PIL import Image

    limit = pixel_limit()
    if not _SILENCED:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _SILENCED.append(True)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(_too_large(path, f"{int(found.group(1)):,} pixels" if found else "too many pixels",
                                   limit)) from None
    with img:
        if limit is not None and img.width * img.height > limit:
            raise DataError(_too_large(path, f"{img.width}x{img.height} = {img.width * img.height:,} pixels", limit))
        yield img


def _too_large(path, declared: str, limit) -> str:
    return (f"Image '{path}' declares {declared}, more than the limit of {limit:,} pixels (a guard against "
            f"decompression bombs); shrink or remove the file, or, if you trust it, raise the limit with "
            f"{MAX_PIXELS_VARIABLE}=N.")


def oriented_size(img) -> tuple[int, int]:
    """``(width, height)`` of an opened image as it is read: after its EXIF orientation (a
    quarter turn swaps them), from the header only."""
    w, h = img.size
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
        w, h = h, w
    return w, h


def _read_plain(path):
    from PIL import ImageOps

    with open_image(path) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("P", "PA", "CMYK", "YCbCr", "HSV", "LA"):
            img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
        array = np.asarray(img)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return _as_stack(array, path, colour=array.ndim == 3), StackInfo("image", bits8=array.dtype == np.uint8)


def _read_tiff(path):
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    colour = None
    if "S" in axes:  # samples per pixel: colour; move it last if stored planar (S, Y, X)
        array = np.moveaxis(array, axes.index("S"), -1)
        colour = True
    elif array.ndim == 3:
        colour = False  # a stack of grey pages (Z, T, Q, I, ...) along the first axis
    stack = _as_stack(array, path, colour)
    if stack.shape[-1] == 4:
        stack = stack[..., :3]
    return stack, StackInfo("tiff", bits8=array.dtype == np.uint8)


def _read_dicom(path):
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise DataError(f"DICOM file '{path}' has no pixel data (is it a report or a SEG object?).")
    raw = ds.pixel_array
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 1:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            values = values.max() + values.min() - values
        stack = values[..., None] if frames > 1 else values[None, :, :, None]
    else:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            raw = convert_color_space(raw, photometric, "RGB")
        stack = raw if frames > 1 else raw[None]
    window = None
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        first = (lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v))
        window = (first(center), first(width))
    bits8 = samples == 3 or (int(getattr(ds, "BitsStored", 16)) <= 8 and "RescaleSlope" not in ds)
    return stack, StackInfo("dicom", bits8=bits8, window=window)


def _read_nifti(path, axis: int):
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    volume = np.asanyarray(img.dataobj)  # scl_slope / scl_inter applied; integer labels stay integer
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise DataError(
            f"NIfTI file '{path}' has shape {volume.shape}; give one 3-D volume per file "
            "(split 4-D series into separate files first)."
        )
    if not 0 <= axis <= 2:
        raise DataError(f"data.slice_axis must be 0, 1 or 2 for NIfTI volumes, got {axis}.")
    slices = np.moveaxis(volume, axis, 0)[..., None]
    info = StackInfo("nifti", bits8=volume.dtype == np.uint8, affine=img.affine, axis=axis, shape=volume.shape)
    return slices, info


def to_uint8(stack: np.ndarray, method: str = "auto", percentiles=(0.5, 99.5), window=None,
             info: StackInfo | None = None) -> np.ndarray:
    """Map raw values to uint8 0..255 with one transform for the whole stack.

    ``auto``: 8-bit data unchanged, anything else by ``percentiles``; ``percentile``: the
    ``percentiles`` (low, high) of the stack go to 0 and 255; ``minmax``: its minimum and
    maximum; ``window``: ``window=(center, width)`` (e.g. CT HU), or the DICOM file's own window;
    ``none``: values clipped to 0..255 as they are.
    """
    if method not in NORMALIZATIONS:
        raise DataError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {method!r}.")
    bits8 = stack.dtype == np.uint8 or (info is not None and info.bits8 and stack.max(initial=0) <= 255
                                        and stack.min(initial=0) >= 0)
    if method == "auto":
        method = "none" if bits8 else "percentile"
    a = stack.astype(np.float32)
    if method == "none":
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if method == "window":
        win = tuple(window) if window else (info.window if info is not None else None)
        if not win:
            raise DataError("normalize: window needs data.window [center, width] (the file has no DICOM window).")
        center, width = float(win[0]), max(float(win[1]), 1e-6)
        lo, hi = center - width / 2, center + width / 2
    elif method == "minmax":
        lo, hi = float(a.min()), float(a.max())
    else:
        p_lo, p_hi = (float(p) for p in percentiles)
        if not 0 <= p_lo < p_hi <= 100:
            raise DataError(f"data.percentiles must be [low, high] with 0 <= low < high <= 100, got {list(percentiles)}.")
        lo, hi = (float(v) for v in np.percentile(a, [p_lo, p_hi]))
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``(..., H, W, C)`` uint8 to ``channels`` (grey repeated to colour, colour averaged to grey)."""
    if image.shape[-1] == channels:
        return image
    if channels == 3 and image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 1:
        return image.mean(axis=-1, keepdims=True).round().astype(np.uint8)
    raise DataError(f"Cannot convert an image with {image.shape[-1]} channels to {channels}.")


# --------------------------------------------------------------------------------------------
# Tiling and stitching


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``tile`` every ``stride``; the last tile is
    moved back to end exactly at the edge (no padding), a length below ``tile`` gives ``[0]``."""
    if tile <= 0 or stride <= 0:
        raise DataError(f"Tile size and stride must be positive, got tile {tile}, stride {stride}.")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(shape, tile, stride=None) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the tiles covering an image of ``shape=(H, W)``."""
    th, tw = int(tile[0]), int(tile[1])
    sh, sw = (int(stride[0]), int(stride[1])) if stride else (max(th // 2, 1), max(tw // 2, 1))
    return [(y, x) for y in tile_starts(int(shape[0]), th, sh) for x in tile_starts(int(shape[1]), tw, sw)]


def extract_tiles(array: np.ndarray, boxes, tile) -> np.ndarray:
    """Tiles ``(n, th, tw, ...)`` of a ``(H, W, ...)`` array; images smaller than the tile are
    padded by reflection (the padding is cropped away again by :func:`stitch`)."""
    th, tw = int(tile[0]), int(tile[1])
    h, w = array.shape[:2]
    if h < th or w < tw:
        pad = [(0, max(th - h, 0)), (0, max(tw - w, 0))] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pad, mode="reflect" if min(h, w) > 1 else "edge")
    return np.stack([array[y:y + th, x:x + tw] for y, x in boxes])


def stitch(tiles: np.ndarray, boxes, shape) -> np.ndarray:
    """Average overlapping ``tiles`` back into an array of ``shape=(H, W)`` (plus the tiles'
    trailing dimensions). Tiles from :func:`extract_tiles` give back the original exactly."""
    tiles = np.asarray(tiles)
    h, w = int(shape[0]), int(shape[1])
    th, tw = tiles.shape[1:3]
    full_h, full_w = max(h, th), max(w, tw)
    acc = np.zeros((full_h, full_w) + tiles.shape[3:], dtype=np.float64)
    count = np.zeros((full_h, full_w), dtype=np.float64)
    for t, (y, x) in zip(tiles, boxes):
        acc[y:y + th, x:x + tw] += t
        count[y:y + th, x:x + tw] += 1
    count = np.maximum(count, 1).reshape(count.shape + (1,) * (acc.ndim - 2))
    out = (acc / count)[:h, :w]
    if np.issubdtype(tiles.dtype, np.integer):
        out = np.rint(out)
    return out.astype(tiles.dtype)
