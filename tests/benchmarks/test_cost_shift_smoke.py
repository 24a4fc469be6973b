"""`benchmarks/cost_shift.py`'s table: per model and op class, the median of after / before over the ops both
versions priced, and each version's sum."""

from __future__ import annotations

from tests.benchmarks import benchmark_script


def test_the_shift_table_gives_each_classs_median_ratio_and_both_sums():
    before = {"bert bfloat16": {"mm1": ("matmul", 1e-3), "mm2": ("matmul", 2e-3), "add": ("elementwise", 1e-3)}}
    after = {"bert bfloat16": {"mm1": ("matmul", 1.5e-3), "mm2": ("matmul", 2e-3), "add": ("elementwise", 1e-3),
                               "new": ("matmul", 9.0)}}  # an op only one version priced is left out
    with benchmark_script("cost_shift") as cost_shift:
        table = cost_shift.shift_table(before, after)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in table.splitlines()[2:]}
    assert rows["bert bfloat16", "matmul"] == "| bert bfloat16 | matmul | 2 | 1.25 | 3 ms | 3.5 ms |"
    assert rows["bert bfloat16", "elementwise"] == "| bert bfloat16 | elementwise | 1 | 1.00 | 1 ms | 1 ms |"
    assert rows["bert bfloat16", "all"] == "| bert bfloat16 | all | 3 | 1.00 | 4 ms | 4.5 ms |"
