"""scoredist's Hydra launchers (conf/hydra/launcher/slurm*.yaml, local.yaml): submitit's, with sweeps that survive
their jobs (scoredist.cluster)."""
