"""tbnn's SLURM launcher for Hydra (``hydra/launcher=slurm``). Hydra takes launchers only from
the ``hydra_plugins`` package; the work is in ``tbnn.slurm``, imported when a multirun uses
this launcher (Hydra imports every plugin at start-up, so this module stays small)."""
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher


class TbnnSlurmLauncher(BaseSubmititLauncher):
    """Submits each run of a multirun as a task of one SLURM job array (``tbnn.slurm.launch``);
    the job side (``__call__``, what submitit runs on the node) is ``tbnn.slurm.run_in_job``."""

    _EXECUTOR = "slurm"

    def launch(self, job_overrides, initial_job_idx):
        from tbnn.slurm import launch

        return launch(self, job_overrides, initial_job_idx)

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
        from tbnn.slurm import run_in_job

        return run_in_job(self, sweep_overrides, job_num, singleton_state)
