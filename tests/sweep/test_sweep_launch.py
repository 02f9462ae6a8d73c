"""distnet sweep is one process that starts each point's ranks itself: started under a launcher, every process
would run the whole sweep (and all but one would find its points taken)."""

import pytest

from ..helpers import assert_user_error, run_distnet


@pytest.mark.mpi
def test_a_sweep_started_under_mpiexec_is_one_line_and_exit_2_on_every_process(spirals_data, tmp_path):
    r = run_distnet(["sweep", "spirals-mlp", "--data", spirals_data, "--batch-sizes", "32,64",
                     "--target", "accuracy=0.8", "--out", tmp_path / "sweep"], n=2, timeout=60)
    assert_user_error(r, "distnet sweep starts each point's ranks itself (--ranks P): run it as one process, "
                         "not under mpiexec or srun (it was started as one of 2, PMI_SIZE=2)")
    assert not (tmp_path / "sweep").exists()
