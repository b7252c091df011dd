"""What every command that sweeps uses unless told otherwise.

No torch here: the command line reads these to build its ``--help``.
"""

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_LAYERS"]

#: the layers every command sweeps unless told otherwise, shallow to deep: two intermediate depths of
#: EfficientNet-B0 (32 x 32 and 16 x 16 at 512 px) and the final block (16 x 16), whose maps the figures,
#: the explorer and the attention numbers use; one record of them serves every command
DEFAULT_LAYERS: tuple[str, ...] = ("features.4", "features.6", "features.8")
#: images per CAM batch of every command
DEFAULT_BATCH_SIZE = 16
