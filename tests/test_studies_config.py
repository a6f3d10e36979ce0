"""kfm reproduce's configuration and the sampling runs it keys."""
from __future__ import annotations


def test_the_largest_accepted_seed_start_samples_up_to_the_last_int64_seed(tmp_path):
    # seed_start may reach 2**63 - n (the last seed 2**63 - 1, as kfm.noise takes it): the cached
    # run's seed column was torch.arange(start, stop), and a stop of 2**63 overflowed int64
    import torch

    from kinetic_fm.sampling.noise import noise
    from kinetic_fm.studies.samples import sampled
    from kinetic_fm.studies.workspace import Workspace

    seeds = range(2**63 - 3, 2**63)
    run = sampled(Workspace(tmp_path), "last-seeds", {"field": "zero"}, lambda x, t: torch.zeros_like(x), seeds,
                  (2,), steps=1)
    assert run["seeds"].tolist() == list(seeds) and run["seeds"].dtype == torch.int64
    torch.testing.assert_close(run["x"], noise(seeds, (2,)))
