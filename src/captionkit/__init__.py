"""captionkit: train, evaluate and serve image-captioning models.

The package follows the data flow, each layer importing only the ones before it: data ->
encoders -> models -> decoding -> metrics -> training -> evaluation -> reporting -> serving -> cli
(`tests/test_layers.py` checks it). `Captioner` is the entry point for using a trained model.

This module sits with the cli at the top: it may re-export anything, and no library module
imports it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import captionkit` stays fast and does not import torch.
    if name == "Captioner":
        from captionkit.evaluation.captioner import Captioner

        return Captioner
    raise AttributeError(name)
