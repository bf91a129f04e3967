"""The guidance families that have no diffusers repository on the hub: their folders are converted from the authors'
checkpoints (scoredist/guidance/convert.py, scripts/convert_checkpoint.py). Imports nothing, so that scripts can name
them in their --help without loading torch."""

CONVERTED = ("zero123", "stable_zero123", "mvdream")
