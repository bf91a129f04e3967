"""The launcher classes conf/hydra/launcher/*.yaml name: submitit's SLURM and local launchers, with the driver's and
the job's side of a sweep that survives its scheduler in scoredist.cluster and scoredist.local_sweep. (Hydra finds
launchers only in the hydra_plugins package, so the classes live here and stay thin.)"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher


class FailedRunsFail:
    """In the job: Hydra runs it as usual; a run that failed then raises, so the job exits non-zero (FAILED)."""

    def __call__(self, *args, **kwargs):
        from scoredist import cluster

        job_return = super().__call__(*args, **kwargs)
        cluster.end_job(job_return)
        return job_return


class ScoredistSlurmLauncher(FailedRunsFail, SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        """In the driver: submit the sweep as one array, wait for every job without raising on any, and return one
        JobReturn per job (scoredist.cluster.launch)."""
        from scoredist import cluster

        return cluster.launch(self, job_overrides, initial_job_idx)


class ScoredistLocalLauncher(FailedRunsFail, LocalLauncher):
    def launch(self, job_overrides, initial_job_idx):
        """On this machine: one job per GPU at a time, each seeing only its own (scoredist.local_sweep)."""
        from scoredist import local_sweep

        return local_sweep.launch(self, job_overrides, initial_job_idx)
