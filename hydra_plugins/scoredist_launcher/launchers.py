"""The launcher classes conf/hydra/launcher/slurm*.yaml name: submitit's SLURM launcher, with the driver's and the
job's side of a sweep that survives its scheduler in scoredist.cluster. (Hydra finds launchers only in the
hydra_plugins package, so the classes live here and stay thin.)"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher


class ScoredistSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        """In the driver: submit the sweep as one array, wait for every job without raising on any, and return one
        JobReturn per job (scoredist.cluster.launch)."""
        from scoredist import cluster

        return cluster.launch(self, job_overrides, initial_job_idx)

    def __call__(self, *args, **kwargs):
        """In the job: Hydra runs it as usual; a run that failed then raises, so the job exits non-zero."""
        from scoredist import cluster

        job_return = super().__call__(*args, **kwargs)
        cluster.end_job(job_return)
        return job_return


class ScoredistLocalLauncher(LocalLauncher):
    def launch(self, job_overrides, initial_job_idx):
        """On this machine: one job per GPU at a time, each seeing only its own (scoredist.local_sweep)."""
        from scoredist import local_sweep

        return local_sweep.launch(self, job_overrides, initial_job_idx)

    def __call__(self, *args, **kwargs):
        """In the job, as on SLURM: a run that failed raises, so the job's process exits non-zero."""
        from scoredist import cluster

        job_return = super().__call__(*args, **kwargs)
        cluster.end_job(job_return)
        return job_return
