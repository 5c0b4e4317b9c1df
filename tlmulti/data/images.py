"""Reading image files into uint8 arrays at the backbone's size and channel count.

PNG, JPEG, BMP, GIF (first frame) and TIFF through Pillow; 16-bit and float images are scaled to
0..255 by their 0.5th and 99.5th percentiles (so a 12-bit microscope image uses the full range);
palette and alpha images become RGB; grey images are repeated to three channels when the
backbone wants colour, colour images averaged when it wants grey. A file declaring more pixels
than ``TLMULTI_MAX_IMAGE_PIXELS`` (default: Pillow's limit, about 89 million) is refused
(:func:`tlmulti.data.medical.open_image`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlmulti.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: Everything image classification reads: the above plus DICOM and NIfTI (slices), via
#: :mod:`tlmulti.data.medical`.
CLASSIFICATION_SUFFIXES = IMAGE_SUFFIXES + (".dcm", ".dicom", ".nii", ".nii.gz")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8: 8-bit passes, wider types by robust percentiles."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    a = array.astype(np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def load_image(path, size=None, channels: int = 3) -> np.ndarray:
    """One image as ``(H, W, channels)`` uint8, resized to ``size=(H, W)`` when given."""
    from PIL import ImageOps, UnidentifiedImageError

    from tlmulti.data.medical import open_image

    path = Path(path)
    try:
        with open_image(path) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)  # phone photos: rotate as the camera says
            if img.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "HSV"):
                img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
            array = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"Image '{path}' does not exist; fix the path in the manifest.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"Cannot read image '{path}' ({type(exc).__name__}: {exc}); remove or replace the file."
        ) from None
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    array = to_uint8(array)
    if array.ndim == 2:
        array = array[..., None]
    return convert(array, size, channels)


def convert(array: np.ndarray, size=None, channels: int = 3) -> np.ndarray:
    """Resize (bilinear) and convert the channel count of a ``(H, W, C)`` uint8 array."""
    from PIL import Image

    if array.shape[-1] != channels:
        if channels == 3 and array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif channels == 1:
            array = array.mean(axis=-1, keepdims=True).round().astype(np.uint8)
    if size is not None and tuple(array.shape[:2]) != tuple(size):
        mode = "L" if array.shape[-1] == 1 else "RGB"
        img = Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode)
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
        array = np.asarray(img)
        if array.ndim == 2:
            array = array[..., None]
    return array


def load_slices(path, size, channels: int = 3, normalize: str = "auto", percentiles=(0.5, 99.5),
                window=None, axis: int = 2) -> np.ndarray:
    """The 2-D images of one file as ``(n, H, W, channels)`` uint8: ``n`` is 1 for a photo or a
    single DICOM, the number of slices (along ``axis``) of a NIfTI volume or frames of a
    multi-frame DICOM / TIFF stack. PNG / JPEG go through :func:`load_image` (EXIF rotation) unless
    ``normalize`` asks for more than the default; DICOM (modality LUT, MONOCHROME1), NIfTI (RAS+)
    and 16-bit / float TIFF through :func:`tlmulti.data.medical.read_stack`, then
    :func:`tlmulti.data.medical.to_uint8` with ``normalize`` (auto | percentile | minmax |
    window | none), one transform per file."""
    from tlmulti.data import medical

    if medical.suffix_of(path) in _PIL_SUFFIXES and normalize == "auto":
        return load_image(path, size, channels)[None]
    stack, info = medical.read_stack(path, axis)
    images = medical.to_uint8(stack, normalize, percentiles, window or None, info)
    return np.stack([convert(medical.match_channels(im, channels) if im.shape[-1] not in (1, 3) else im,
                             size, channels) for im in images])


def load_files(paths, size, channels: int = 3, progress: bool | None = None, **intensity) -> tuple[np.ndarray, np.ndarray]:
    """Every 2-D image of ``paths`` stacked ``(N, H, W, channels)`` uint8, and for each the index
    of the file it came from (a volume gives one image per slice). Over 1,000 files, a progress
    line shows the files read (``progress`` forces it on or off)."""
    paths = list(paths)
    from tlmulti.progress import Every, progress_bar

    done = Every(progress_bar(len(paths), "Reading image files", progress), len(paths))
    stacks = []
    for p in paths:
        stacks.append(load_slices(p, size, channels, **intensity))
        done.add()
    origin = np.repeat(np.arange(len(stacks)), [len(s) for s in stacks])
    if not stacks:
        return np.empty((0, int(size[0]), int(size[1]), channels), np.uint8), origin
    return np.concatenate(stacks), origin


def image_count(path, axis: int = 2) -> int:
    """How many 2-D images a file holds (1 for a photo, the slices of a NIfTI volume along
    ``axis``, the frames of a multi-frame DICOM or pages of a TIFF stack), from its header only."""
    from tlmulti.data import medical

    if medical.suffix_of(path) in medical.PLAIN_SUFFIXES:
        return 1
    shape = medical.stack_shape(path, axis)
    return 1 if shape is None else shape[0]


def stream_files(paths, size, channels: int = 3, counts=None, progress: bool | None = None, **intensity):
    """``(x, origin)`` as :func:`load_files` gives them, but ``x`` a
    :class:`~tlmulti.data.lazy.FileArray` decoded one image at a time in the input pipeline.

    A file with one image is decoded there from the file itself; a file with several (a volume,
    a multi-frame file; ``counts`` from :func:`image_count`) is decoded once here, as
    :func:`load_files` decodes it, and its images written to the slice cache
    (:mod:`tlmulti.data.stacks`), from which the pipeline reads them one by one. None when the
    disk has no room for that copy (the caller reads the files into memory instead)."""
    from functools import partial

    from tlmulti.data import stacks
    from tlmulti.data.lazy import FileArray
    from tlmulti.progress import Every, progress_bar

    h, w = int(size[0]), int(size[1])
    paths = [str(p) for p in paths]
    counts = [image_count(p, intensity.get("axis", 2)) for p in paths] if counts is None else list(counts)
    describe = {"reader": "images", "size": [h, w], "channels": channels,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in intensity.items()}}
    several = [i for i, n in enumerate(counts) if n > 1]
    done = Every(progress_bar(len(several), "Decoding volumes and multi-frame files to the slice cache",
                              progress if progress is not None else (len(several) > 20 or None)), len(several))
    items, origin = [], []
    for i, (p, n) in enumerate(zip(paths, counts)):
        if n == 1:
            items.append(p)
            origin.append(i)
            continue
        files = stacks.stored(p, describe, partial(_decode_all, p, (h, w), channels, intensity))
        if files is None:
            return None
        n = len(np.load(files[0], mmap_mode="r"))
        items.extend((p, k, files[0]) for k in range(n))
        origin.extend([i] * n)
        done.add()
    load = partial(_load_one, size=(h, w), channels=channels, intensity=dict(intensity))
    return FileArray(items, load, (h, w, channels), np.uint8, describe), np.asarray(origin, dtype=np.int64)


def _decode_all(path, size, channels, intensity) -> list[np.ndarray]:
    return [load_slices(path, size, channels, **intensity)]


def _load_one(item, size, channels, intensity) -> np.ndarray:
    if isinstance(item, tuple):  # (file, slice, its decoded copy)
        from tlmulti.data.stacks import read_slice

        return read_slice(item[2], item[1])
    return load_slices(item, size, channels, **intensity)[0]


def image_info(paths, limit: int = 5000) -> dict:
    """``{"sizes": {"WxH": n}, "modes": {mode: n}}`` of up to ``limit`` image files, read from
    their headers only; sizes as the files are read (after EXIF rotation)."""
    from collections import Counter

    from tlmulti.data.medical import open_image, oriented_size

    sizes, modes = Counter(), Counter()
    for p in list(paths)[:limit]:
        try:
            with open_image(p) as img:
                w, h = oriented_size(img)
                sizes[f"{w}x{h}"] += 1
                modes[img.mode] += 1
        except (OSError, DataError):
            continue
    return {"sizes": dict(sizes.most_common()), "modes": dict(modes.most_common())}


def image_files(path, suffixes=CLASSIFICATION_SUFFIXES) -> list[Path]:
    """A single image, or every image in a folder (recursively, sorted)."""
    from tlmulti.data.manifest import files_in

    return files_in(path, suffixes, "images")
