"""What report.html and the run folder show of a segmentation run: overlay panels (image | truth
| prediction) of the first test images and of the images with the lowest foreground Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_OVERLAYS = 4


class SegmentationReport:
    """Report parts of :class:`~tlmulti.tasks.segmentation.Segmentation` (which gives
    ``probabilities``, ``classes`` and ``recipe``)."""

    def colours(self) -> list[tuple[int, int, int]]:
        from tlmulti.reports.overlays import class_colours

        return class_colours(self.classes, self.recipe.data.palette)

    def report(self, run_dir, model, examples, metrics) -> list[str]:
        """Overlays (image | truth | prediction) of the first few test images."""
        from tlmulti.data.slides import stitched
        from tlmulti.reports.overlays import overlay_panel

        run_dir = Path(run_dir)
        folder = run_dir / "overlays"
        folder.mkdir(exist_ok=True)
        written = []
        subset_sources = list(dict.fromkeys(examples.meta["source"]))[:N_OVERLAYS]
        keep = [i for i, s in enumerate(examples.meta["source"]) if s in set(subset_sources)]
        part = examples.subset(keep)
        probs = self.probabilities(model, part.x)
        for name, image, p, mask in stitched(part, probs):
            path = folder / f"{_safe(name)}.png"
            overlay_panel(image, p.argmax(-1), mask, self.colours()).save(path)
            written.append(str(path.relative_to(run_dir)))
        return written

    def worst_examples(self, model, examples, k: int = 16) -> list[dict]:
        """The images with the lowest foreground Dice, as overlay panels (image | truth | prediction)."""
        from tlmulti.data.slides import stitched
        from tlmulti.evaluation.segmentation import confusion, segmentation_metrics
        from tlmulti.reports.overlays import overlay_panel

        if examples.y is None:
            return []
        n = len(examples.classes)
        scored = []
        for name, image, p, mask in stitched(examples, self.probabilities(model, examples.x)):
            ids = p.argmax(-1)
            dice = segmentation_metrics(confusion(mask, ids, n), examples.classes)["mean_dice"]
            scored.append((dice, name, image, ids, mask))
        scored.sort(key=lambda t: t[0])
        return [{"name": name, "true": "mask", "predicted": f"Dice {dice:.3f}", "probability": dice,
                 "loss": 1.0 - dice, "kind": "overlay",
                 "image": np.asarray(overlay_panel(image, ids, mask, self.colours()))}
                for dice, name, image, ids, mask in scored[:k]]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
