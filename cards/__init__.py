"""Dataset card, datasheet, model card and benchmark card, generated from manifests and results."""
