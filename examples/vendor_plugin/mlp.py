"""A model to try the Acme plug-in on: two matmuls around an exact GELU (which the Acme compiler refuses), then a
matmul whose inner size, 1000, is not a whole number of the Acme matrix engine's 16-wide tiles.

    partitioner compile examples/vendor_plugin/mlp.py --targets acme-npu,cpu-x86 -o out/
"""

import torch


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 8192), torch.nn.GELU(), torch.nn.Linear(8192, 2048),
                                torch.nn.Linear(2048, 1000), torch.nn.Linear(1000, 64))
    return model.to(torch.bfloat16).eval(), (torch.randn(2048, 2048, dtype=torch.bfloat16),)
