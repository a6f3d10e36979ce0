"""Block sizes for passes over large arrays (kinetic_fm.blocks)."""
import torch

from kinetic_fm import blocks
from kinetic_fm.blocks import block_size


def test_cpu_blocks_fit_the_cpu_budget_and_other_devices_the_larger_one():
    row = 3 * 8 * 1000                                     # 24,000 bytes a row
    assert block_size(torch.device("cpu"), row, 10**6) == blocks.CPU_BLOCK_BYTES // row
    assert block_size(torch.device("meta"), row, 10**6) == blocks.DEVICE_BLOCK_BYTES // row
    assert block_size("cuda", row, 10**6) == blocks.DEVICE_BLOCK_BYTES // row   # no GPU needed


def test_a_block_holds_at_least_one_item_and_at_most_all():
    assert block_size("cpu", blocks.CPU_BLOCK_BYTES * 10, 50) == 1        # one huge row
    assert block_size("cpu", 8, 50) == 50                                 # everything fits
    assert block_size("cpu", 8, 0) == 1                                   # empty: loops still step
    assert block_size("cpu", 0, 50) == 50                                 # zero-width rows
