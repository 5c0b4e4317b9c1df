"""Segmentation masks: pairing with images, reading class ids, palettes, paired augmentation.

A segmentation data folder holds ``images/`` and ``masks/`` whose files pair by stem
(``images/case7.tif`` with ``masks/case7.png``; ``data.mask_suffix: _mask`` also pairs
``masks/case7_mask.png``). A mask stores one class id per pixel (0 = background):

* grey PNG / TIFF / NIfTI / DICOM / ``.npy`` with the ids as values; palette ("P" mode) PNGs
  give their palette indices, as Pascal VOC masks do;
* colour masks, mapped to ids by ``data.palette`` (class name -> ``[r, g, b]``, in class order);
  the palette may also map grey values (``{background: [0], nucleus: [255]}``);
* instance masks (one id per object, as microscopy tools write them) become
  background / foreground with ``data.binarize_masks: true``.

Every problem names the file: an image without a mask, a mask of another size, a colour not in
the palette, an id beyond the class list.

Example::

    from tlmulti.data.masks import pair_files, read_mask
    for image_path, mask_path in pair_files("data/train"):
        mask = read_mask(mask_path, palette={"background": [0, 0, 0], "tumour": [255, 0, 0]})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlmulti.choices import FLIPS
from tlmulti.data.medical import list_files, open_image, read_stack, stem_of, suffix_of
from tlmulti.errors import DataError

_SHOW = 5


def _listing(paths, limit: int = _SHOW) -> str:
    paths = [str(p) for p in paths]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(f"'{p}'" for p in paths[:limit]) + more


def _by_stem(files, folder, strip: str = "") -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        stem = stem_of(f)
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        if stem in out:
            raise DataError(
                f"Folder '{folder}' has two files for stem '{stem}': '{out[stem].name}' and '{f.name}'; "
                "keep one file per image."
            )
        out[stem] = f
    return out


def data_folders(root, images_dir: str = "images", masks_dir: str = "masks") -> tuple[Path, Path]:
    """``(root/images, root/masks)``, or an error that shows the expected layout."""
    root = Path(root)
    images, masks = root / images_dir, root / masks_dir
    if not root.is_dir():
        raise DataError(f"Segmentation data '{root}' must be a folder with {images_dir}/ and {masks_dir}/ sub-folders.")
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(
                f"Segmentation data '{root}' has no '{folder.name}/' folder; put images in "
                f"'{images}' and masks with the same file names in '{masks}'."
            )
    return images, masks


def pair_files(root, images_dir: str = "images", masks_dir: str = "masks",
               mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of ``root/images`` and ``root/masks`` paired by file stem.

    Any image without a mask or mask without an image is an error listing them all.
    """
    images_folder, masks_folder = data_folders(root, images_dir, masks_dir)
    images = _by_stem(list_files(images_folder), images_folder)
    masks = _by_stem(list_files(masks_folder), masks_folder, strip=mask_suffix)
    if not images:
        raise DataError(f"Folder '{images_folder}' has no images.")
    lonely_images = [images[s] for s in sorted(set(images) - set(masks))]
    lonely_masks = [masks[s] for s in sorted(set(masks) - set(images))]
    problems = []
    if lonely_images:
        problems.append(f"image(s) without a mask in '{masks_folder}': {_listing(lonely_images)}")
    if lonely_masks:
        problems.append(f"mask(s) without an image in '{images_folder}': {_listing(lonely_masks)}")
    if problems:
        hint = f" (masks named <stem>{mask_suffix}.<ext>)" if mask_suffix else ""
        raise DataError(
            f"Segmentation data '{root}': {'; '.join(problems)}. Every image needs a mask with the same "
            f"file stem{hint}; add the missing files or remove the extra ones."
        )
    return [(images[s], masks[s]) for s in sorted(images)]


def normalize_palette(palette: dict | None) -> list[tuple[str, tuple[int, ...]]]:
    """``[(class name, colour)]`` from a recipe palette; colours are 1 (grey) or 3 (RGB) values."""
    out = []
    for name, colour in (palette or {}).items():
        values = (colour,) if isinstance(colour, (int, float)) else tuple(colour)
        if len(values) not in (1, 3) or any(not 0 <= int(v) <= 65535 for v in values):
            raise DataError(f"data.palette.{name} must be [r, g, b] or [grey], got {colour!r}.")
        out.append((str(name), tuple(int(v) for v in values)))
    return out


def map_palette(array: np.ndarray, palette, classes: list[str], path) -> np.ndarray:
    """Class ids ``(..., H, W)`` from a colour or grey mask ``(..., H, W, C)`` by the palette."""
    entries = normalize_palette(palette) if isinstance(palette, dict) else palette
    index = {name: i for i, name in enumerate(classes)}
    channels = array.shape[-1]
    out = np.full(array.shape[:-1], -1, dtype=np.int32)
    for name, colour in entries:
        if name not in index:
            raise DataError(f"data.palette names class '{name}', which is not in data.classes ({', '.join(classes)}).")
        if len(colour) == 3 and channels == 1:
            hit = array[..., 0] == colour[0] if len(set(colour)) == 1 else np.zeros(out.shape, bool)
        elif len(colour) == 1 and channels == 3:
            hit = np.all(array == colour[0], axis=-1)
        else:
            hit = np.all(array == np.asarray(colour), axis=-1)
        out[hit] = index[name]
    unknown = out < 0
    if unknown.any():
        values, counts = np.unique(array[unknown].reshape(-1, channels), axis=0, return_counts=True)
        worst = values[np.argsort(-counts)[:3]]
        shown = ", ".join(str(list(int(v) for v in c)) for c in worst)
        raise DataError(
            f"Mask '{path}' has {int(unknown.sum())} pixels whose colour is not in data.palette "
            f"(e.g. {shown}); add those colours to data.palette."
        )
    return out


def read_mask(path, axis: int = 2, palette=None, classes: list[str] | None = None,
              binarize: bool = False) -> np.ndarray:
    """Class ids ``(n, H, W)`` int32 of a mask file (``n`` slices, 1 for a 2-D mask)."""
    path = Path(path)
    if suffix_of(path) == ".png" or suffix_of(path) in (".bmp", ".gif"):
        stack = _read_indexed(path, keep_palette_indices=not palette)
    else:
        stack, _ = read_stack(path, axis)
    if palette:
        ids = map_palette(stack, palette, classes or [n for n, _ in normalize_palette(palette)], path)
    else:
        if stack.shape[-1] == 3:
            if not (np.array_equal(stack[..., 0], stack[..., 1]) and np.array_equal(stack[..., 0], stack[..., 2])):
                raise DataError(
                    f"Mask '{path}' is a colour image; map its colours to classes with data.palette "
                    "(class name -> [r, g, b]) or save masks as grey images of class ids."
                )
        values = stack[..., 0]
        if np.issubdtype(values.dtype, np.floating):
            rounded = np.rint(values)
            if np.abs(values - rounded).max(initial=0) > 1e-3:
                raise DataError(f"Mask '{path}' has non-integer values; masks must hold class ids (0, 1, 2, ...).")
            values = rounded
        if values.min(initial=0) < 0:
            raise DataError(f"Mask '{path}' has negative values; masks must hold class ids (0, 1, 2, ...).")
        ids = values.astype(np.int32)
    if binarize:
        ids = (ids > 0).astype(np.int32)
    return ids


def _read_indexed(path, keep_palette_indices: bool) -> np.ndarray:
    """A PNG/BMP/GIF mask as ``(1, H, W, C)``: palette images keep their indices unless a recipe
    palette maps their colours."""
    try:
        with open_image(path) as img:
            img.seek(0)
            if img.mode == "P" and not keep_palette_indices:
                img = img.convert("RGB")
            elif img.mode in ("RGBA", "LA", "PA"):
                img = img.convert("RGB" if img.mode == "RGBA" else "L")
            array = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"Cannot read mask '{path}' ({type(exc).__name__}: {exc}); remove or replace the file.") from None
    return array[None, :, :, None] if array.ndim == 2 else array[None]


def check_class_ids(ids: np.ndarray, classes: list[str], path) -> None:
    """Every id in ``ids`` must name a class."""
    top = int(ids.max(initial=0))
    if top >= len(classes):
        bad = sorted(int(v) for v in np.unique(ids[ids >= len(classes)]))
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise DataError(
            f"Mask '{path}' has class id(s) {shown} but only {len(classes)} classes are known "
            f"({', '.join(classes[:10])}); list every class in data.classes, or set "
            "data.binarize_masks: true for instance masks (one id per object)."
        )


def default_classes(max_id: int, binarize: bool = False) -> list[str]:
    """Class names when the recipe gives none: background, then ``class_1`` ... ``class_<max_id>``."""
    if binarize:
        return ["background", "foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, max_id + 1)]


# --------------------------------------------------------------------------------------------
# Augmentation that moves the image and its mask together


def paired_augmentation(flip: str = "both", rot90: bool = True, brightness: float = 0.0,
                        contrast: float = 0.0, seed: int = 0):
    """A ``tf.data`` map function ``(image, mask, seeds) -> (image, mask)`` for training tiles, or
    None. ``seeds`` (int32 ``[2]``, from :func:`tlmulti.data.pipeline.make_epoch_dataset`) seeds
    stateless draws, so the augmentation of an epoch is the same after a resume.

    Flips and quarter turns are applied to both (quarter turns only by 180 degrees for
    non-square tiles, so shapes stay fixed); brightness (a fraction of 255 added) and contrast
    (a factor around the mean) change the image only. Images stay uint8.
    """
    flip = flip or "none"
    if flip not in FLIPS:
        raise DataError(f"data.augment.flip must be one of {', '.join(FLIPS)}, got {flip!r}.")
    if flip == "none" and not rot90 and not brightness and not contrast:
        return None
    import tensorflow as tf

    def fn(image, mask, seeds):
        def draw(offset, minval=0.0, maxval=1.0, dtype=tf.float32):
            return tf.random.stateless_uniform([], seed=seeds + [seed, offset], minval=minval, maxval=maxval,
                                               dtype=dtype)

        def coin(offset):
            return draw(offset) < 0.5

        m = mask[..., None]
        if flip in ("horizontal", "both"):
            do = coin(1)
            image = tf.cond(do, lambda: tf.image.flip_left_right(image), lambda: image)
            m = tf.cond(do, lambda: tf.image.flip_left_right(m), lambda: m)
        if flip in ("vertical", "both"):
            do = coin(2)
            image = tf.cond(do, lambda: tf.image.flip_up_down(image), lambda: image)
            m = tf.cond(do, lambda: tf.image.flip_up_down(m), lambda: m)
        if rot90:
            k = draw(3, 0, 4, tf.int32)
            if image.shape[0] is None or image.shape[0] != image.shape[1]:
                k = 2 * (k % 2)
            image = tf.image.rot90(image, k)
            m = tf.image.rot90(m, k)
        if brightness or contrast:
            dtype = image.dtype
            x = tf.cast(image, tf.float32)
            if contrast:
                factor = draw(4, 1.0 - contrast, 1.0 + contrast)
                mean = tf.reduce_mean(x)
                x = (x - mean) * factor + mean
            if brightness:
                x = x + 255.0 * draw(5, -brightness, brightness)
            image = tf.cast(tf.clip_by_value(x, 0.0, 255.0), dtype)
        return image, m[..., 0]

    return fn


def paired_views(flip: str = "both", rot90: bool = True, square: bool = True) -> list[tuple[bool, bool, int]]:
    """The distinct ``(vertical, horizontal, quarter_turns)`` transforms that
    :func:`paired_augmentation` draws (the flips, then counter-clockwise quarter turns), no
    transform first: up to the 8 symmetries of a square tile, 4 of a non-square one (turned only
    by 180 degrees). The flips and the turns are each drawn uniformly, so every distinct transform
    is drawn equally often (they form a product of two subgroups of the square's symmetries)."""
    flip = flip or "none"
    turns = ([0, 1, 2, 3] if square else [0, 2]) if rot90 else [0]
    probe = np.arange(9 if square else 12).reshape((3, 3) if square else (3, 4))
    views, seen = [], set()
    for vertical in ([False, True] if flip in ("vertical", "both") else [False]):
        for horizontal in ([False, True] if flip in ("horizontal", "both") else [False]):
            for k in turns:
                key = np.rot90(probe[::-1 if vertical else 1, ::-1 if horizontal else 1], k).tobytes()
                if key not in seen:
                    seen.add(key)
                    views.append((vertical, horizontal, k))
    return views


def write_mask(folder: Path, base: str, ids: np.ndarray, info, colours) -> Path:
    """Write predicted class ids ``(n, H, W)`` next to their input's format: NIfTI inputs get
    ``<base>_mask.nii.gz`` in the input's canonical orientation, stacks ``<base>_mask.tif``, 2-D
    images a palette PNG ``<base>_mask.png`` whose pixel values are the ids (viewers show the
    class ``colours``)."""
    from PIL import Image

    n_classes = len(colours)
    small = n_classes <= 256
    if info.kind == "nifti":
        import nibabel as nib

        volume = np.moveaxis(ids, 0, info.axis).astype(np.uint8 if small else np.int16)
        path = folder / f"{base}_mask.nii.gz"
        nib.save(nib.Nifti1Image(volume, info.affine), str(path))
        return path
    if ids.shape[0] > 1:
        import tifffile

        path = folder / f"{base}_mask.tif"
        tifffile.imwrite(str(path), ids.astype(np.uint8 if small else np.uint16))
        return path
    path = folder / f"{base}_mask.png"
    if not small:
        Image.fromarray(ids[0].astype(np.uint16)).save(path)
        return path
    img = Image.fromarray(ids[0].astype(np.uint8), mode="P")
    flat = [v for c in colours for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path)
    return path


def pixel_counts(masks, n_classes: int, chunk: int = 256) -> np.ndarray:
    """Pixels of each class over ``masks`` (an array or streamed masks, read a chunk at a time)."""
    counts = np.zeros(n_classes, np.int64)
    for start in range(0, len(masks), chunk):
        part = np.asarray(masks[np.arange(start, min(start + chunk, len(masks)))])
        counts += np.bincount(part.ravel(), minlength=n_classes)[:n_classes]
    return counts
