"""What a run folder shows a person: plots of metrics and curves, segmentation overlays."""
