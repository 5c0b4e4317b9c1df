"""Object-detection boxes: COCO, Pascal VOC and YOLO readers, a summary, images and targets at
the network's size.

Every reader gives one :class:`BoxRecord` per image: float32 boxes ``(n, 4)`` ``x_min, y_min,
x_max, y_max`` in continuous pixel coordinates of the image *as read* (pixel row ``i``, column
``j`` covers ``[j, j+1) x [i, i+1)``: a box around columns 3..7 has ``x_min = 3``, ``x_max = 8``;
EXIF rotation applied; DICOM and 16-bit TIFF at their stored size), int32 class ids and
``(height, width)``. ``n`` may be 0: an image without objects (a negative) is kept. Formats:

* COCO: a ``.json`` file, or a folder holding exactly one JSON with ``annotations``. ``bbox`` is
  ``[x, y, width, height]`` in pixels; ``iscrowd: 1`` is skipped; ``file_name`` is relative to the
  JSON's folder, else to ``images/`` beside it. Classes: category names in category-id order. A
  declared ``width`` / ``height`` must match the file as read.
* Pascal VOC: a folder with ``Annotations/*.xml`` (images in ``JPEGImages/``) or ``.xml`` files
  beside the images; the image is ``<filename>``, else the XML's stem. VOC corners are 1-based and
  inclusive, so ``x_min = xmin - 1``, ``x_max = xmax`` (likewise y). ``<difficult>`` objects are
  kept (``BoxRecord.difficult``); images without an XML are negatives. Classes: names, sorted.
* YOLO: a folder with ``images/`` and ``labels/`` (``labels/<same relative path>.txt``; none: a
  negative), or an Ultralytics ``data.yaml`` (``path``; ``train`` / ``val`` / ``test`` as folders,
  image files or ``.txt`` lists; ``names`` as a list or ``{id: name}``; labels where ``/images/``
  becomes ``/labels/``), whose ``train`` split is read unless ``ref`` names another
  (``data.yaml:val``). Lines ``class x_center y_center width height`` are fractions of the image
  (a polygon ``class x1 y1 x2 y2 ...`` gives its bounding box). Names: ``names`` or a
  ``classes.txt`` (one per line) beside or inside ``labels/``.

Validation / test data passes the training ``classes``: names map onto them; any other name is an
error. Every problem is one :class:`DataError` line naming the file (and image, line or
annotation id) and the fix. A box may stick out of its image by 1 pixel (it is clipped), no more.
Image sizes come from file headers; only :func:`load_detection_images` decodes pixels.

Example::

    records, classes = read_boxes("data/train/annotations.json")
    x, y = load_detection_images(records, (320, 320)), scale_targets(records, (320, 320))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlmulti.data.images import IMAGE_SUFFIXES
from tlmulti.data.medical import DICOM_SUFFIXES, suffix_of
from tlmulti.errors import DataError

SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES
TOLERANCE = 1.0  # pixels a box may stick out of its image (clipped)
_FORMATS = ("COCO (a .json file, or a folder with one), Pascal VOC (a folder with Annotations/*.xml, or .xml "
            "files beside the images) or YOLO (a folder with images/ and labels/, or a data.yaml)")


@dataclass
class BoxRecord:
    """One image and its boxes (coordinates as the module text says)."""

    path: Path
    boxes: np.ndarray  # float32 (n, 4): x_min, y_min, x_max, y_max in pixels of the image as read
    labels: np.ndarray  # int32 (n,) class ids
    size: tuple[int, int]  # (height, width) as read
    difficult: np.ndarray | None = None  # bool (n,): VOC <difficult>; all False for other formats


@dataclass
class _Raw:
    path: Path
    size: tuple[int, int]
    source: str  # the annotation file, for messages
    items: list = field(default_factory=list)  # (box, class name, difficult)


def image_size(path, where: str = "") -> tuple[int, int]:
    """``(height, width)`` of an image as it is read (after EXIF rotation), from its header."""
    from tlmulti.data import medical

    path, at = Path(path), f" ({where})" if where else ""
    if not path.is_file():
        raise DataError(f"Image '{path}'{at} is missing; add the file or fix its name in the annotations.")
    suffix = suffix_of(path)
    if suffix not in SUFFIXES:
        raise DataError(f"'{path}'{at} is not a supported image ({', '.join(SUFFIXES)}); convert it to PNG or TIFF.")
    # from the header (EXIF orientation, DICOM Rows / Columns, TIFF tags); read_stack names a broken file
    shape = medical.stack_shape(path) or medical.read_stack(path)[0].shape[:3]
    if shape[0] != 1:
        raise DataError(f"'{path}'{at} holds {shape[0]} images (a stack or multi-frame file); detection reads one "
                        "2-D image per file: save the frames as separate files.")
    return int(shape[1]), int(shape[2])


def _box(values, size, where: str, hint: str = "") -> list[float]:
    """A checked ``[x_min, y_min, x_max, y_max]`` clipped to an image of ``size=(H, W)``."""
    x0, y0, x1, y1 = (float(v) for v in values)
    h, w = size
    shown = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}] (x_min, y_min, x_max, y_max)"
    if not (x1 > x0 and y1 > y0):  # also catches NaN
        raise DataError(f"{where}: box {shown} has zero or negative area; fix or remove it{hint}.")
    clipped = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
    outside = max(-x0, -y0, x1 - w, y1 - h)
    if outside > TOLERANCE or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(f"{where}: box {shown} lies outside the {w}x{h} (width x height) image by {outside:g} pixels "
                        f"(up to {TOLERANCE:g} is clipped); fix the box or check that it belongs to this image{hint}.")
    return clipped


def _listing(folder: Path, recursive: bool = False) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in files if p.is_file() and not p.name.startswith(".") and suffix_of(p) in SUFFIXES)


def _stem(path: Path, base: Path | None = None) -> str:
    text = str(path.relative_to(base)) if base else path.name
    return text[: len(text) - len(suffix_of(path))]


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {kind} '{path}' ({type(exc).__name__}: {exc}); fix the file.") from None


# -- COCO ---------------------------------------------------------------------------------------


def _coco(path: Path) -> tuple[list[_Raw], list[str]]:
    try:
        data = json.loads(_read_text(path, "COCO file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the "
                        "file.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise DataError(f"COCO file '{path}' needs the lists 'images', 'annotations' and 'categories'; fix it.")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories") or []}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"'{path}': each of 'categories' needs an integer 'id' and a 'name'; fix it.") from None
    images: dict = {}
    for k, entry in enumerate(data["images"]):
        try:
            image_id, file_name = entry["id"], str(entry["file_name"])
            declared = (int(entry["height"]), int(entry["width"])) if "height" in entry and "width" in entry else None
        except (KeyError, TypeError, ValueError):
            raise DataError(f"'{path}': images entry {k} needs id, file_name, width and height; fix it.") from None
        where = f"'{path}' image id {image_id} ('{file_name}')"
        if image_id in images:
            raise DataError(f"{where}: image id {image_id} is listed twice; give every image its own id.")
        folder = path.parent
        tries = [folder / file_name, folder / "images" / file_name, folder / "images" / Path(file_name).name]
        found = next((c for c in tries if c.is_file()), None)
        if found is None:
            raise DataError(f"{where}: the image is missing (looked for '{tries[0]}' and '{tries[1]}'); add the file "
                            "or fix file_name.")
        size = image_size(found, where)
        if declared is not None and declared != size:
            raise DataError(f"{where}: declared {declared[1]}x{declared[0]} (width x height) but the file is "
                            f"{size[1]}x{size[0]} as read (after EXIF rotation); fix width/height in the JSON or "
                            "re-export the annotations for this image.")
        images[image_id] = _Raw(found, size, str(path))
    known = ", ".join(f"{i} '{n}'" for i, n in sorted(categories.items()))
    for k, ann in enumerate(data["annotations"]):
        where = f"'{path}' annotation id {ann.get('id', k) if isinstance(ann, dict) else k}"
        try:
            if ann.get("iscrowd"):
                continue
            image_id, category = ann["image_id"], int(ann["category_id"])
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{where} is malformed: it needs image_id, category_id and bbox [x, y, width, height]; "
                            "fix the annotation.") from None
        if image_id not in images:
            raise DataError(f"{where} refers to image_id {image_id}, which is not in 'images'; add the image or remove "
                            "the annotation.")
        if category not in categories:
            raise DataError(f"{where} has unknown category id {category} (known: {known}); add it to 'categories' or "
                            "fix the annotation.")
        record = images[image_id]
        record.items.append((_box([x, y, x + bw, y + bh], record.size, f"{where} (image '{record.path.name}')",
                                  " (COCO bbox is [x, y, width, height] in pixels)"), categories[category], False))
    return list(images.values()), [categories[i] for i in sorted(categories)]


# -- Pascal VOC ---------------------------------------------------------------------------------


def _voc(xmls: list[Path], image_dir: Path | None) -> tuple[list[_Raw], list[str]]:
    import xml.etree.ElementTree as ET

    indexes: dict[Path, dict[str, Path]] = {}
    records, used = [], set()
    for xml in xmls:
        data = xml.read_bytes()
        try:
            root = None if b"<!ENTITY" in data else ET.fromstring(data)  # entities: never needed, refused
        except ET.ParseError as exc:
            raise DataError(f"'{xml}' is not valid XML ({exc}); fix the file.") from None
        if root is None or root.tag != "annotation":
            raise DataError(f"'{xml}' is not a Pascal VOC annotation (<annotation> without DOCTYPE entities); fix or "
                            "remove it.")
        folder = image_dir or xml.parent
        if folder not in indexes:
            indexes[folder] = {_stem(p): p for p in reversed(_listing(folder))}  # first of a stem wins
        filename = (root.findtext("filename") or "").strip()
        image = folder / filename if filename and (folder / filename).is_file() else None
        image = image or indexes[folder].get(Path(filename).stem) or indexes[folder].get(xml.stem)
        if image is None:
            raise DataError(f"'{xml}': its image ('{filename or xml.stem + '.*'}') is missing from '{folder}'; add "
                            "the image or fix <filename>.")
        record = _Raw(image, image_size(image, f"annotation '{xml}'"), str(xml))
        used.add(image)
        for k, obj in enumerate(root.findall("object"), 1):
            name, bndbox = (obj.findtext("name") or "").strip(), obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(bndbox.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
                difficult = bool(int(float(obj.findtext("difficult") or 0)))
            except (AttributeError, TypeError, ValueError):
                name = ""
            if not name:
                raise DataError(f"'{xml}' object {k}: needs <name> and <bndbox> with numbers xmin, ymin, xmax, ymax; "
                                "fix the XML.")
            record.items.append((_box([x0 - 1, y0 - 1, x1, y1], record.size, f"'{xml}' object {k} ('{name}')",
                                      " (VOC corners are 1-based and inclusive: 1 <= xmin <= xmax <= width)"), name,
                                 difficult))
        records.append(record)
    for folder, stems in indexes.items():
        for image in sorted(set(stems.values()) - used):
            records.append(_Raw(image, image_size(image), f"{folder} (no annotation: a negative image)"))
    return records, sorted({item[1] for r in records for item in r.items})


# -- YOLO ---------------------------------------------------------------------------------------


def _yolo_file(image: Path, label: Path, names: list[str]) -> _Raw:
    record = _Raw(image, image_size(image), str(label))
    if not label.is_file():
        return record  # no label file: a negative image
    h, w = record.size
    for i, line in enumerate(_read_text(label, "label file").splitlines(), 1):
        parts, where = line.split(), f"'{label}' line {i}"
        if not parts:
            continue
        try:
            cls, values = float(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            values = []
        if len(values) == 4:
            cx, cy, bw, bh = values
            corners = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = np.asarray(values[0::2]) * w, np.asarray(values[1::2]) * h
            corners = [xs.min(), ys.min(), xs.max(), ys.max()]
        else:
            raise DataError(f"{where}: expected 'class x_center y_center width height' (fractions of the image), got "
                            f"{line.strip()[:60]!r}; fix the line.")
        if cls != int(cls) or not 0 <= int(cls) < len(names):
            raise DataError(f"{where}: class id {parts[0]} is not one of the {len(names)} class ids (0 .. "
                            f"{len(names) - 1}: {', '.join(names[:10])}); fix the id or add the name.")
        record.items.append((_box(corners, record.size, where, " (YOLO values are fractions 0..1 of the image)"),
                             names[int(cls)], False))
    return record


def _yolo_folder(root: Path, classes) -> tuple[list[_Raw], list[str]]:
    images_dir, labels_dir = root / "images", root / "labels"
    names_file = next((p for p in (root / "classes.txt", labels_dir / "classes.txt") if p.is_file()), None)
    if names_file is not None:
        names = [n.strip() for n in _read_text(names_file, "class list").splitlines() if n.strip()]
    elif classes is not None:
        names = list(classes)  # ids index the training classes
    else:
        raise DataError(f"YOLO data '{root}' has no class names; add a classes.txt (one name per line, line 1 = id 0) "
                        "beside labels/, or use a data.yaml with 'names'.")
    images = _listing(images_dir, recursive=True)
    stems = {_stem(p, images_dir) for p in images}
    for label in sorted(labels_dir.rglob("*.txt")):
        if label.name != "classes.txt" and _stem(label, labels_dir) not in stems:
            raise DataError(f"Label file '{label}' has no image '{images_dir / _stem(label, labels_dir)}.*' "
                            f"({', '.join(SUFFIXES)}); add the image or remove the label file.")
    return [_yolo_file(p, labels_dir / (_stem(p, images_dir) + ".txt"), names) for p in images], names


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    a, b, text = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}", str(image)
    text = b.join(text.rsplit(a, 1)) if a in text else text
    return Path(text[: len(text) - len(suffix_of(image))] + ".txt")


def _yolo_yaml(path: Path, split: str) -> tuple[list[_Raw], list[str]]:
    import yaml

    try:
        config = yaml.safe_load(_read_text(path, "YAML file"))
    except yaml.YAMLError as exc:
        raise DataError(f"'{path}' is not valid YAML ({str(exc).splitlines()[0]}); fix the file.") from None
    names = config.get("names") if isinstance(config, dict) else None
    if not isinstance(names, (list, dict)):
        raise DataError(f"'{path}' needs 'names' (a list, or {{id: name}}) and the split folders (Ultralytics "
                        "data.yaml); add them.")
    if isinstance(names, dict):
        table = {int(k): v for k, v in names.items() if str(k).isdigit()}
        if sorted(table) != list(range(len(names))):
            raise DataError(f"'{path}': 'names' must map ids 0, 1, 2, ... to names; fix the ids.")
        names = [table[i] for i in range(len(table))]
    names = [str(n) for n in names]
    root = Path(str(config.get("path") or "."))
    root = root if root.is_absolute() else path.parent / root
    entry = config.get(split)
    if not entry:
        present = [s for s in ("train", "val", "test") if config.get(s)]
        raise DataError(f"'{path}' has no '{split}' split (it has: {', '.join(present) or 'none'}); name one as "
                        f"'{path}:{present[0] if present else 'val'}' or add the split.")
    images = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item)) if Path(str(item)).is_absolute() else root / str(item)
        if p.is_dir():
            images += _listing(p, recursive=True)
        elif p.is_file() and p.suffix.lower() == ".txt":
            lines = [Path(s.strip()) for s in _read_text(p, "image list").splitlines() if s.strip()]
            images += [q if q.is_absolute() else p.parent / q for q in lines]
        elif p.is_file():
            images.append(p)
        else:
            raise DataError(f"'{path}': split '{split}' points to '{p}', which does not exist; fix 'path' or "
                            f"'{split}' in the YAML.")
    return [_yolo_file(p, _label_path(p), names) for p in images], names


# -- Format detection and the public functions --------------------------------------------------


def _read_any(path: Path, split: str | None, classes) -> tuple[list[_Raw], list[str]]:
    if not path.exists():
        raise DataError(f"Detection data '{path}' does not exist; give {_FORMATS}.")
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return _yolo_yaml(path, split or "train")
        if split is not None or path.suffix.lower() != ".json":
            raise DataError(f"'{path}{':' + split if split else ''}' is not detection data; give {_FORMATS} "
                            "(only a data.yaml takes a split after ':').")
        return _coco(path)
    if (path / "Annotations").is_dir():
        image_dir = next((d for d in (path / "JPEGImages", path / "images") if d.is_dir()), path)
        return _voc(sorted((path / "Annotations").glob("*.xml")), image_dir)
    if (path / "data.yaml").is_file():
        return _yolo_yaml(path / "data.yaml", "train")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return _yolo_folder(path, classes)
    jsons = [p for p in sorted(path.glob("*.json")) if b'"annotations"' in p.read_bytes()]
    if len(jsons) > 1:
        raise DataError(f"Folder '{path}' holds {len(jsons)} COCO files ({', '.join(p.name for p in jsons)}); give "
                        "the one to read.")
    if jsons:
        return _coco(jsons[0])
    if list(path.glob("*.xml")):
        return _voc(sorted(path.glob("*.xml")), None)
    raise DataError(f"Folder '{path}' is not detection data; give {_FORMATS}.")


def read_boxes(ref: str | Path, classes: list[str] | None = None) -> tuple[list[BoxRecord], list[str]]:
    """``(records, classes)`` of COCO, Pascal VOC or YOLO detection data (format detected).

    ``classes``: the training classes, for validation / test data (its names must be among them).
    Without it (training data) the classes come from the data, and data without a box is an error."""
    head, _, split = str(ref).rpartition(":")
    named = head.lower().endswith((".yaml", ".yml")) and split and not Path(str(ref)).exists()
    path, split = (Path(head), split) if named else (Path(str(ref)), None)
    raw, names = _read_any(path, split, classes)
    known = list(classes) if classes is not None else names
    index = {n: i for i, n in enumerate(known)}
    records = []
    for r in raw:
        for _, name, _ in r.items:
            if name not in index:
                raise DataError(f"'{r.source}' (image '{r.path.name}') has class '{name}', which is not among the "
                                f"known classes ({', '.join(known)}); validation and test data must use the training "
                                "classes: rename or remove those boxes.")
        records.append(BoxRecord(path=r.path, boxes=np.asarray([i[0] for i in r.items], np.float32).reshape(-1, 4),
                                 labels=np.asarray([index[i[1]] for i in r.items], np.int32),
                                 size=(int(r.size[0]), int(r.size[1])),
                                 difficult=np.asarray([i[2] for i in r.items], bool).reshape(-1)))
    if not records:
        raise DataError(f"Detection data '{ref}' lists no images; add images and their annotations.")
    if classes is None and not known:
        raise DataError(f"Detection data '{ref}' declares no classes; name at least one (COCO 'categories', VOC "
                        "<object><name>, YOLO 'names' / classes.txt).")
    if classes is None and not any(len(r.labels) for r in records):
        raise DataError(f"Detection data '{ref}' has {len(records)} images but no boxes; training needs labelled "
                        "boxes: check that the annotation files belong to these images.")
    return records, known


def box_summary(records, classes) -> dict:
    """Counts and box sizes: images, images without boxes, boxes per class, quantiles of the box
    side (square root of the area, in image pixels), the most boxes in one image."""
    labels = np.concatenate([np.zeros(0, np.int64)] + [r.labels for r in records])
    counts = np.bincount(labels, minlength=len(classes))[: len(classes)]
    wh = np.concatenate([np.zeros((0, 2))] + [r.boxes[:, 2:4] - r.boxes[:, 0:2] for r in records])
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    quantiles = None if not side.size else {
        k: round(float(v), 3) for k, v in zip(("min", "p10", "median", "p90", "max"),
                                               np.percentile(side, [0, 10, 50, 90, 100]))}
    return {"images": len(records), "images_without_boxes": sum(len(r.labels) == 0 for r in records),
            "boxes": int(counts.sum()), "boxes_per_class": {c: int(n) for c, n in zip(classes, counts)},
            "box_side": quantiles, "boxes_per_image_max": max((len(r.labels) for r in records), default=0)}


def load_detection_images(records, size: tuple[int, int], channels: int = 3, **intensity) -> np.ndarray:
    """The records' images as uint8 ``(N, H, W, channels)``, each stretched to ``size=(H, W)``.

    Read as the classification readers read them (:func:`tlmulti.data.images.load_slices`: EXIF
    rotation, 16-bit / float TIFF and DICOM scaled to 0..255); ``intensity`` takes their
    ``normalize``, ``percentiles`` and ``window``."""
    from tlmulti.data.images import convert, load_slices

    out = np.empty((len(records), int(size[0]), int(size[1]), channels), np.uint8)
    for i, r in enumerate(records):
        image = load_slices(r.path, None, channels, **intensity)[0]
        if tuple(image.shape[:2]) != tuple(r.size):
            raise DataError(f"Image '{r.path}' is {image.shape[1]}x{image.shape[0]} but was {r.size[1]}x{r.size[0]} "
                            "when its boxes were read; it changed since: read the annotations again.")
        out[i] = convert(image, (int(size[0]), int(size[1])), channels)
    return out


def scale_targets(records, size: tuple[int, int], max_boxes: int | None = None) -> np.ndarray:
    """float32 ``(N, M, 5)`` rows ``[x_min, y_min, x_max, y_max, class]``: each image's boxes scaled
    from its own size to ``size=(H, W)``, then rows of -1. ``M`` is ``max_boxes`` (an image with
    more keeps its largest boxes, in their order) or the most boxes in one image (at least 1)."""
    m = int(max_boxes) if max_boxes else max((len(r.labels) for r in records), default=0)
    out = np.full((len(records), max(m, 1), 5), -1.0, np.float32)
    for i, r in enumerate(records):
        keep = np.arange(len(r.labels))
        if len(keep) > out.shape[1]:
            area = (r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])
            keep = np.sort(np.argsort(-area, kind="stable")[: out.shape[1]])
        sx, sy = float(size[1]) / r.size[1], float(size[0]) / r.size[0]
        out[i, : len(keep), :4] = r.boxes[keep] * np.asarray([sx, sy, sx, sy], np.float32)
        out[i, : len(keep), 4] = r.labels[keep]
    return out
