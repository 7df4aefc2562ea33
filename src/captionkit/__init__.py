"""captionkit: train, evaluate and serve image-captioning models.

The package follows the data flow: data -> encoders -> models -> decoding -> training ->
evaluation -> serving -> reporting (HTML reports, attention maps, comparing runs). `Captioner` is
the entry point for using a trained model.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import captionkit` stays fast and does not import torch.
    if name == "Captioner":
        from captionkit.serving import Captioner

        return Captioner
    raise AttributeError(name)
