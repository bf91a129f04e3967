"""Finding a diffusers folder's weights quickly, and saying what to pass instead when they cannot be found.

Weights load only through `from_pretrained(..., use_safetensors=True)` of a hub id or a local folder. Before any
component is loaded, `resolve_pretrained` checks that the folder (or the cached hub id, or with a network the hub id)
exists, so an offline user gets one line saying what to pass instead (`WeightsNotFoundError`, which the command line
reports without a traceback) rather than huggingface_hub's retries and a stack of errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scoredist.errors import WeightsNotFoundError
from scoredist.guidance.converted import CONVERTED

FOLDER_LAYOUTS = {  # what a local folder of each family holds (besides model_index.json and scheduler/)
    "sd": "unet/, text_encoder/, tokenizer/ and, for latent models, vae/",
    "sdxl": "unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/",
    "sd3": "transformer/, vae/, text_encoder/ … text_encoder_3/, tokenizer/ … tokenizer_3/",
    "flux": "transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/",
    "zero123": "unet/, vae/, image_encoder/, cc_projection/",
    "stable_zero123": "unet/, vae/, image_encoder/, cc_projection/",
    "mvdream": "unet/ (with the camera embedding), vae/, text_encoder/, tokenizer/",
}
EXACT_COUNTERPART = {  # the exact prior of the same setting, which runs anywhere
    "zero123": "`python train.py +experiment=i23d_shapes`",
    "stable_zero123": "`python train.py +experiment=i23d_shapes`",
    "mvdream": "`python train.py +experiment=janus_shapes`",
}


def what_to_pass_instead(pretrained: str, reason: str, family: str = "sd") -> str:
    tiny = f"tiny-{family}"
    flag = "" if family == "sd" else f" --family {family}"
    return (
        f"Could not load diffusion weights from {pretrained!r}: {reason}. Instead, pass a local diffusers folder "
        "(guidance.pretrained=/path/to/local/folder, containing model_index.json, scheduler/, "
        f"{FOLDER_LAYOUTS[family]}, "
        f"with .safetensors weights{converted(family)}), or build a tiny random-weight test pipeline with `python "
        f"scripts/make_tiny_pipeline.py {tiny}{flag}` and pass guidance.pretrained={tiny}, or use the exact offline "
        + (
            f"counterpart: {EXACT_COUNTERPART[family]}."
            if family in EXACT_COUNTERPART
            else 'prior: `python train.py +experiment=demo`, or guidance=shapes prompt="a red cube".'
        )
    )


def converted(family: str) -> str:
    """For families converted from their authors' checkpoints: the command that writes their folder."""
    if family not in CONVERTED:
        return ""
    return f" — written by `python scripts/convert_checkpoint.py {family} CHECKPOINT FOLDER --base BASE_FOLDER`"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set, read at call time (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: a down network fails here in ≤ timeout s (DNS errors at once), instead of
    after huggingface_hub's ~25 s of retries. Behind a proxy a direct connect proves nothing, so it is skipped."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist on disk is a mistyped folder.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_pretrained(pretrained: str, revision: str | None = None, family: str = "sd") -> tuple[str, bool, dict]:
    """Check quickly that weights can be found: on disk, in the hub cache, or (network up) on the hub.

    Returns (source, local_files_only, model_index): source is a local folder or a hub id. Raises WeightsNotFoundError
    for a missing folder, a folder without model_index.json, or a hub id that is not cached while HF_HUB_OFFLINE is
    set or the hub is unreachable.
    """
    path = Path(pretrained).expanduser()
    if path.exists() or _looks_like_path(pretrained):
        if not (path / "model_index.json").is_file():
            reason = "this local folder does not exist" if not path.exists() else "the folder has no model_index.json"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, reason, family))
        return str(path), True, json.loads((path / "model_index.json").read_text())

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(pretrained, "model_index.json", revision=revision)
    except HFValidationError as err:
        raise WeightsNotFoundError(
            what_to_pass_instead(pretrained, "neither a folder nor a valid hub id", family)
        ) from err
    # Offline also when the hub cannot be reached, so that a cached model loads from disk without retry delays.
    offline = hub_offline() or not hub_reachable()
    if not isinstance(cached, str):
        if offline:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the model hub is unreachable"
            raise WeightsNotFoundError(
                what_to_pass_instead(pretrained, f"{why} and this hub id is not in the cache", family)
            )
        try:  # online: one small download tells us quickly whether the id exists and is accessible
            cached = hf_hub_download(pretrained, "model_index.json", revision=revision)
        except (OSError, ValueError) as err:  # HfHubHTTPError, ConnectionError, LocalEntryNotFoundError are OSErrors
            why = f"downloading model_index.json failed ({type(err).__name__}: {err})"
            raise WeightsNotFoundError(what_to_pass_instead(pretrained, why, family)) from err
    return pretrained, offline, json.loads(Path(cached).read_text())
