"""Segmentation data as slides: 2-D images with their masks, cut into tiles and stitched back.

A *slide* is one 2-D image (a file, a slice of a volume, or a region of an image) with its mask.
:func:`read_slides` reads a segmentation folder (``images/`` + ``masks/`` paired by stem, see
:mod:`tlmulti.data.masks`; any format of :mod:`tlmulti.data.medical`) into slides, normalising
intensities per image or volume as the recipe's data section says. :func:`split_slides` holds
out whole files (or a block of slices, or a band of rows of a single image) so no pixel is in
both training and validation. :func:`to_examples` cuts slides into overlapping tiles (or
resizes them to the network size) and records where each tile came from, so
:func:`stitched` can put predictions back together at full size.

``data`` below is a segmentation recipe data section (``slice_axis``, ``normalize``,
``percentiles``, ``window``, ``images_dir``, ``masks_dir``, ``mask_suffix``, ``classes``,
``palette``, ``binarize_masks``, ``skip_empty_slices``).

Example::

    from tlmulti.data.slides import read_slides, to_examples
    slides, classes = read_slides("data/train", recipe.data, channels=3)
    tiles = to_examples(slides, classes, size=(128, 128), channels=3, tiling=((128, 128), (64, 64)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlmulti.data.examples import Examples
from tlmulti.data.manifest import resolve_source
from tlmulti.errors import DataError


@dataclass
class Slide:
    """One 2-D image (a file, a slice of a volume, or a region of an image) with its mask.

    A slide read for streaming keeps only where its pixels are (``image`` and ``mask`` None,
    ``mask_path`` and ``shape`` set): its tiles are decoded in the input pipeline."""

    name: str
    path: str
    image: np.ndarray | None  # (H, W, C) uint8
    mask: np.ndarray | None  # (H, W) int32
    group: str  # the file it came from: validation splits never separate a file's slices
    index: int = 0
    mask_path: str | None = None
    shape: tuple | None = None  # (H, W)
    stored: tuple | None = None  # a streamed volume's decoded (images, masks) .npy in the slice cache

    @property
    def size(self) -> tuple:
        return tuple(self.image.shape[:2]) if self.image is not None else tuple(self.shape)

    def streamed(self) -> "Slide":
        return dataclasses.replace(self, image=None, mask=None, shape=self.size)


def input_files(items) -> list[Path]:
    """The image files ``items`` names: files as given, folders as every supported image in them
    (sorted); a missing path or a folder without images is a :class:`DataError`."""
    from tlmulti.data.medical import is_supported

    files = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f))
            if not found:
                raise DataError(f"Folder '{p}' has no images.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"'{p}' does not exist.")
    return files


def images_of(path, data, channels: int) -> tuple[np.ndarray, Any]:
    """uint8 slices ``(n, H, W, C)`` of one image file, normalised as ``data`` says, and the
    reader's :class:`~tlmulti.data.medical.StackInfo`."""
    from tlmulti.data.medical import match_channels, read_stack, to_uint8

    stack, info = read_stack(path, axis=data.slice_axis)
    images = to_uint8(stack, data.normalize, data.percentiles, data.window or None, info)
    return match_channels(images, channels), info


def _decoded_pair(image_path, mask_path, data, channels: int, known, several: bool, options: dict):
    """``(images, masks, stored)`` of one image file and its mask (None without one), checked
    against each other. With ``several`` (a streamed file holding several images) the pair is
    decoded once into the slice cache and ``images`` / ``masks`` are its memory-mapped copies,
    ``stored`` their ``.npy`` paths (False when the disk has no room for them); otherwise
    ``stored`` is None."""
    from tlmulti.data import stacks
    from tlmulti.data.masks import read_mask

    def decode():
        images, _ = images_of(image_path, data, channels)
        if mask_path is None:
            return [images]
        masks = read_mask(mask_path, axis=data.slice_axis, palette=data.palette or None, classes=known,
                          binarize=data.binarize_masks)
        if masks.shape[0] != images.shape[0] or masks.shape[1:3] != images.shape[1:3]:
            raise DataError(
                f"Image '{image_path}' is {_size(images)} but its mask '{mask_path}' is {_size(masks)}; "
                "a mask must have its image's size (and slice count)."
            )
        return [images, masks]

    def compact():  # the stored copy of masks with ids below 256: a quarter of the disk
        arrays = decode()
        if len(arrays) > 1 and arrays[1].size and arrays[1].max() < 256:
            arrays[1] = arrays[1].astype(np.uint8)
        return arrays

    if not several:
        arrays = decode()
        return arrays[0], arrays[1] if len(arrays) > 1 else None, None
    files = stacks.stored(image_path, options, compact, others=(mask_path,))
    if files is None:
        return None, None, False
    arrays = [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
    return arrays[0], arrays[1] if len(arrays) > 1 else None, tuple(files) + (None,) * (2 - len(files))


def resolve_classes(data, max_id: int, given: list[str] | None = None) -> list[str]:
    """Class names: ``given``, else ``data.classes``, the palette's names, or ``background,
    class_1, ...`` up to the largest id in the masks."""
    from tlmulti.data.masks import default_classes, normalize_palette

    if given:
        return list(given)
    if data.classes:
        classes = list(data.classes)
    elif data.palette:
        classes = [name for name, _ in normalize_palette(data.palette)]
    else:
        classes = default_classes(max_id, data.binarize_masks)
    if len(classes) < 2:
        raise DataError("Segmentation needs at least two classes (background and one more); check data.classes.")
    return classes


def read_slides(ref: str, data, channels: int, classes: list[str] | None = None, labelled: bool = True):
    """``(slides, classes)`` of a segmentation folder (``dataset:NAME/SPLIT`` too); unlabelled
    data may also be a single image or a folder of images.

    Every file is read once (to check its mask and find the classes). With ``data.streaming``
    (``auto``: once the decoded images, counted from the files' headers, pass
    :data:`~tlmulti.data.lazy.STREAM_BYTES`) the slides keep no pixels and :func:`to_examples`
    gives tiles decoded in the input pipeline: from the file itself for a 2-D image, from the
    slice cache (:mod:`tlmulti.data.stacks`) for the slices of a volume or multi-frame file."""
    from tlmulti.data.lazy import stream_choice
    from tlmulti.data.masks import check_class_ids, pair_files
    from tlmulti.data.medical import list_files, stack_shape, stem_of

    source = resolve_source(ref)
    if labelled:
        pairs = pair_files(source, data.images_dir, data.masks_dir, data.mask_suffix)
    elif source.is_file():
        pairs = [(source, None)]
    else:
        folder = source / data.images_dir if (source / data.images_dir).is_dir() else source
        pairs = [(p, None) for p in list_files(folder)]
        if not pairs:
            raise DataError(f"Folder '{folder}' has no images.")
    known = classes or (list(data.classes) if data.classes else None)
    setting = getattr(data, "streaming", False)
    stream_choice(setting, 0, 0)  # checks the value
    stream, shapes = False, [None] * len(pairs)
    if setting is not False:
        shapes = [stack_shape(p, data.slice_axis) for p, _ in pairs]
        images_held = sum(n * h * w for n, h, w in filter(None, shapes)) * channels
        one_image = len(pairs) == 1 and (shapes[0] or (1,))[0] == 1  # split by rows: needs its pixels
        stream = not one_image and stream_choice(setting, 1, images_held)
    options = {"reader": "segmentation", "channels": channels, "classes": known,
               **{k: getattr(data, k, None) for k in ("slice_axis", "normalize", "percentiles", "window",
                                                       "palette", "binarize_masks")}}
    slides, max_id = [], 0
    for (image_path, mask_path), shape in zip(pairs, shapes):
        several = stream and shape is not None and shape[0] > 1
        images, masks, stored = _decoded_pair(image_path, mask_path, data, channels, known, several, options)
        if stored is False:  # no room on disk for a volume's slices: this run reads everything into memory
            return read_slides(ref, dataclasses.replace(data, streaming=False), channels, classes, labelled)
        if masks is not None:
            if known:
                check_class_ids(masks, known, mask_path)
            max_id = max(max_id, int(masks.max(initial=0)))
        stem = stem_of(image_path)
        many = images.shape[0] > 1
        for k in range(images.shape[0]):
            mask = None if masks is None else masks[k]
            if many and mask is not None and data.skip_empty_slices and not mask.any():
                continue
            slide = Slide(name=f"{stem}_s{k:03d}" if many else stem, path=str(image_path), image=images[k],
                          mask=mask, group=str(image_path), index=k,
                          mask_path=None if mask_path is None else str(mask_path), stored=stored)
            slides.append(slide.streamed() if stream else slide)
    if not slides:
        raise DataError(f"Segmentation data '{source}' has no slices left (all masks empty with data.skip_empty_slices).")
    if not labelled:
        return slides, list(classes or data.classes or [])
    classes = resolve_classes(data, max_id, classes)
    if not known:
        if max_id == 0:
            raise DataError(f"Every mask in '{source}' is all background (0); segmentation needs labelled pixels.")
        for s in slides:
            if s.mask is not None:  # a streamed slide's mask was checked against the ids found
                check_class_ids(s.mask, classes, s.path)
    return slides, classes


def to_examples(slides: list[Slide], classes: list[str], size, channels: int, tiling=None, data=None) -> Examples:
    """Tiles (``tiling = (tile, stride)``) or images resized to ``size`` of ``slides``, with the
    metadata to stitch them back (``source``, ``path``, ``box``, ``size``, ``slice``). Streamed
    slides (see :func:`read_slides`; ``data`` is then the recipe's data section) give
    :class:`~tlmulti.data.lazy.FileArray` tiles and masks, decoded exactly as here."""
    from tlmulti.data.images import convert
    from tlmulti.data.medical import extract_tiles, tile_boxes

    h, w = size
    xs, ys, items = [], [], []
    meta: dict[str, list] = {"source": [], "path": [], "box": [], "size": [], "slice": []}
    for s in slides:
        shape = list(s.size)
        boxes = tile_boxes(shape, *tiling) if tiling else [None]
        if s.image is None:
            items.extend((s.path, s.index, s.mask_path, None if b is None else (int(b[0]), int(b[1])), s.stored)
                         for b in boxes)
        elif tiling:
            xs.append(extract_tiles(s.image, boxes, tiling[0]))
            if s.mask is not None:
                ys.append(extract_tiles(s.mask, boxes, tiling[0]))
        else:
            xs.append(convert(s.image, (h, w), channels)[None])
            if s.mask is not None:
                ys.append(resize_nearest(s.mask, (h, w))[None])
        for box in boxes:
            meta["source"].append(s.name)
            meta["path"].append(s.path)
            meta["box"].append(None if box is None else [int(box[0]), int(box[1])])
            meta["size"].append(shape)
            meta["slice"].append(s.index)
    if items:
        if xs:
            raise ValueError("slides must be all streamed or all in memory")
        x, y = _streamed_tiles(items, classes, (h, w), channels, tiling, data)
        return Examples(x=x, y=y, classes=list(classes), meta=meta)
    x = np.concatenate(xs).astype(np.uint8)
    y = np.concatenate(ys).astype(np.int32) if ys else None
    return Examples(x=x, y=y, classes=list(classes), meta=meta)


def _streamed_tiles(items, classes, size, channels: int, tiling, data):
    from functools import partial

    from tlmulti.data.lazy import FileArray

    out = tuple(int(v) for v in (tiling[0] if tiling else size))
    describe = {"reader": "segmentation", "size": list(out), "channels": channels, "tiling": tiling,
                **{k: getattr(data, k, None) for k in ("slice_axis", "normalize", "percentiles", "window",
                                                        "palette", "binarize_masks")}}
    x = FileArray(items, partial(_tile_image, data=data, channels=channels, size=out, tiled=bool(tiling)),
                  out + (channels,), np.uint8, describe)
    y = None
    if items[0][2] is not None:
        y = FileArray([(m, k, p, b, stored) for p, k, m, b, stored in items],
                      partial(_tile_mask, data=data, classes=list(classes), size=out, tiled=bool(tiling)),
                      out, np.int32, {**describe, "classes": list(classes)})
    return x, y


def _tile_image(item, data, channels: int, size, tiled: bool) -> np.ndarray:
    from tlmulti.data.images import convert
    from tlmulti.data.medical import extract_tiles

    path, k, _, box, stored = item
    if stored is not None:
        from tlmulti.data.stacks import read_slice

        image = read_slice(stored[0], k)
    else:
        image = images_of(path, data, channels)[0][k]
    return extract_tiles(image, [box], size)[0] if tiled else convert(image, size, channels)


def _tile_mask(item, data, classes, size, tiled: bool) -> np.ndarray:
    from tlmulti.data.masks import read_mask
    from tlmulti.data.medical import extract_tiles

    path, k, _, box, stored = item
    if stored is not None:
        from tlmulti.data.stacks import read_slice

        mask = read_slice(stored[1], k)
    else:
        mask = read_mask(path, axis=data.slice_axis, palette=data.palette or None, classes=classes,
                         binarize=data.binarize_masks)[k]
    tile = extract_tiles(mask, [box], size)[0] if tiled else resize_nearest(mask, size)
    return tile.astype(np.int32)


def derived_tile(shapes, contract, n_files: int, min_tiles: int = 24):
    """The tile for images of ``shapes`` (``(slices, H, W)`` of a sample of ``n_files`` files)
    with a backbone whose input contract is ``contract`` (H, W): None when no image is larger
    (resize instead), else the largest size from the contract down to 128 px in steps of 32 that
    cuts the images into at least ``min_tiles`` tiles at half-tile stride."""
    from tlmulti.data.medical import tile_starts

    h, w = (int(v) for v in contract)
    if not shapes or not any(H > h or W > w for _, H, W in shapes):
        return None

    def tiles(th, tw):
        n = sum(k * len(tile_starts(H, th, max(1, th // 2))) * len(tile_starts(W, tw, max(1, tw // 2)))
                for k, H, W in shapes)
        return n * n_files / len(shapes)

    chosen, smallest = (h, w), min(128, h, w)
    for th, tw in ((h - 32 * k, w - 32 * k) for k in range(max(h, w))):
        if min(th, tw) < smallest:
            break
        chosen = (th, tw)
        if tiles(th, tw) >= min_tiles:
            break
    return list(chosen)


def split_slides(slides: list[Slide], fraction: float, seed: int = 0, tiled: bool = False):
    """(train, val) slides with no file, slice or pixel in both: whole files when there are
    several, else a block of slices, else (``tiled``) a band of rows at the bottom of the image."""
    groups = list(dict.fromkeys(s.group for s in slides))
    if len(groups) >= 2:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(groups))
        n = min(max(int(round(len(groups) * fraction)), 1), len(groups) - 1)
        held = {groups[i] for i in order[:n]}
        return [s for s in slides if s.group not in held], [s for s in slides if s.group in held]
    if len(slides) >= 2:
        n = min(max(int(round(len(slides) * fraction)), 1), len(slides) - 1)
        return slides[:-n], slides[-n:]
    if not tiled:
        raise DataError(
            f"Only one training image ('{slides[0].path}'); give validation data (--val-data) or set "
            "data.tile so a band of the image can be held out."
        )
    s = slides[0]
    rows = s.image.shape[0]
    cut = rows - min(max(int(round(rows * fraction)), 1), rows - 1)
    top = dataclasses.replace(s, name=f"{s.name}_rows0-{cut}", image=s.image[:cut], mask=s.mask[:cut])
    bottom = dataclasses.replace(s, name=f"{s.name}_rows{cut}-{rows}", image=s.image[cut:], mask=s.mask[cut:])
    return [top], [bottom]


def stitched(examples: Examples, probs: np.ndarray):
    """Per source image: ``(name, image, probabilities, mask)`` at full size for tiles (overlaps
    averaged), at the network size for resized images."""
    from tlmulti.data.medical import stitch

    order = list(dict.fromkeys(examples.meta["source"]))
    index: dict[str, list[int]] = {}
    for i, s in enumerate(examples.meta["source"]):
        index.setdefault(s, []).append(i)
    for name in order:
        idx = index[name]
        boxes = [examples.meta["box"][i] for i in idx]
        mask = None
        if boxes[0] is None:
            i = idx[0]
            image, p = examples.x[i], probs[i]
            if examples.y is not None:
                mask = examples.y[i]
        else:
            size = examples.meta["size"][idx[0]]
            image = stitch(examples.x[idx], boxes, size)
            p = stitch(probs[idx], boxes, size)
            if examples.y is not None:
                mask = stitch(examples.y[idx], boxes, size)
        yield name, image, p, mask


def _size(stack: np.ndarray) -> str:
    n, h, w = stack.shape[:3]
    return f"{w}x{h}" + (f" x {n} slices" if n > 1 else "")


def resize_nearest(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of a class-id mask (ids never blend)."""
    h, w = mask.shape[:2]
    if (h, w) == tuple(size):
        return mask
    rows = (np.arange(size[0]) * h / size[0]).astype(int)
    cols = (np.arange(size[1]) * w / size[1]).astype(int)
    return mask[rows][:, cols]
