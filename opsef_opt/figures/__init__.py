"""Figures a user judges segmentations by: overlays, colour-coded labels, decision sheets."""
