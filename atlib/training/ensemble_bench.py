"""Is one vectorised forward over several small models faster than training them one by one? (issue 14)

``python -m atlib bench --ensemble`` times, in one run and interleaved, the unit of adversarial-training work
(forward, backward to the weights *and* the input, as a PGD step needs) for ``n_models`` small CNNs:

* ``sequential``: one model after the other (what each worker process of :mod:`atlib.training.pool` does);
* ``vmap``: all models at once through ``torch.func.vmap`` over stacked weights (``functional_call``), each
  on its own batch, the batching the issue suggested to use 2 cores better.

The ratio answers whether replacing the pool's processes with one vectorised ensemble would pay.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from atlib.core.models import small_cnn
from atlib.training.bench import _time_interleaved


def ensemble_vs_sequential(n_models: int = 6, batch_size: int = 128, repeats: int = 20, threads: int | None = 1,
                           width: int = 16, input_grad: bool = True) -> dict[str, float]:
    """Median seconds per step for ``n_models`` fashion-sized small CNNs of ``width``, sequential vs vmap, and the
    ratio. ``input_grad``: also the gradient to the input (a PGD step of AT); without it, a distillation step
    (chapter 04's students: width 8)."""
    if threads is not None:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    nets = [small_cnn((1, 28, 28), 10, width) for _ in range(n_models)]
    xs = torch.rand(n_models, batch_size, 1, 28, 28, generator=g)
    ys = torch.randint(0, 10, (n_models, batch_size), generator=g)

    def sequential() -> None:
        for net, x, y in zip(nets, xs, ys):
            F.cross_entropy(net(x.clone().requires_grad_(input_grad)), y).backward()

    params, buffers = stack_module_state(nets)
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    skeleton = small_cnn((1, 28, 28), 10, width).to("meta")

    def loss(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(skeleton, (p, b), (x,)), y)

    def vectorised() -> None:
        vmap(loss)(params, buffers, xs.clone().requires_grad_(input_grad), ys).sum().backward()

    t = _time_interleaved({"sequential": sequential, "vmap": vectorised}, torch.device("cpu"), repeats)
    for p in [*params.values(), *(q for n in nets for q in n.parameters())]:
        p.grad = None
    sequential()
    vectorised()
    diff = max(float((params[k].grad - torch.stack([dict(n.named_parameters())[k].grad for n in nets])).abs().max())
               for k in params)  # both compute the same gradients: the comparison is of equal work
    return {"n_models": n_models, "batch_size": batch_size, "width": width, "input_grad": input_grad,
            "threads": torch.get_num_threads(),
            "sequential_s": t["sequential"], "vmap_s": t["vmap"], "vmap_over_sequential": t["vmap"] / t["sequential"],
            "max_grad_diff": diff}
