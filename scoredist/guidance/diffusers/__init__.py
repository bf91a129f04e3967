"""diffusers backbones as guidance, one file per family on one base (base.py):

sd.py    Stable Diffusion 1.x / 2.x   UNet, CLIP                        ε or v on the VP path
sdxl.py  SDXL                         UNet, CLIP-L + OpenCLIP-bigG      ε on the VP path, pooled text + size ids
sd3.py   SD3 / SD3.5                  MM-DiT, CLIP-L + CLIP-G + T5      flow velocity, shifted sigmas
flux.py  FLUX.1                       MM-DiT, CLIP-L (pooled) + T5      flow velocity, guidance-distilled
"""
