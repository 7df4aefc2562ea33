"""Evaluation: using a trained run. `captioner.Captioner` captions images with it (the Python
API); `evaluate.evaluate_run` captions a split of a dataset and scores it with
`captionkit.metrics`."""
